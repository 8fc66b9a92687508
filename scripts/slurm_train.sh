#!/bin/bash
# Multi-node `mmpt train` on SLURM: one torchrun per node (srun), rendezvous on the first node.
#
#   CONFIG=configs/models/vlm_tiny.yaml RUN_DIR=/shared/runs/vlm sbatch scripts/slurm_train.sh \
#       --set distributed.backend=fsdp2
#
# Extra arguments go to `mmpt train`. RUN_DIR must be on a filesystem every node sees: each
# rank writes its own checkpoint shards there and rank 0 commits them.
#
# Preemption and time limits: SLURM sends SIGUSR1 to this script 300 s before the limit
# (--signal=B:USR1@300), and SIGTERM when a job is preempted or cancelled. The trap passes the
# signal to srun, srun to torchrun on every node, torchrun (--signals-to-handle) to every rank;
# the ranks agree on a step, save a checkpoint, print "received SIGUSR1: saved ..." and exit 0
# (torchrun waits --shutdown-timeout seconds for that). The script then requeues the job, and
# the next start continues from the newest committed checkpoint (--resume starts fresh when
# there is none). A run that finishes, or fails, is not requeued.
#
#SBATCH --job-name=mmpt-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out

set -uo pipefail

CONFIG=${CONFIG:?set CONFIG to a config path or a shipped config name}
RUN_DIR=${RUN_DIR:?set RUN_DIR to a run directory on a shared filesystem}
PYTHON=${PYTHON:-python}
NPROC_PER_NODE=${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}

requeue=0
stop_ranks() {  # $1: the signal to pass on
    echo "$(date -Is) slurm_train.sh: received SIG$1, asking every rank to save and stop"
    requeue=1
    kill -s "$1" "$srun_pid" 2>/dev/null
}
trap 'stop_ranks USR1' USR1
trap 'stop_ranks TERM' TERM

srun --kill-on-bad-exit=1 "$PYTHON" -m torch.distributed.run \
    --nnodes="$SLURM_NNODES" --nproc-per-node="$NPROC_PER_NODE" \
    --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" \
    --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout=280 \
    -m mmpretrain.cli train "$CONFIG" --run-dir "$RUN_DIR" --resume "$@" &
srun_pid=$!

# `wait` returns early when a trapped signal arrives: keep waiting until srun has exited
wait "$srun_pid"
status=$?
while kill -0 "$srun_pid" 2>/dev/null; do
    wait "$srun_pid"
    status=$?
done

if [ "$requeue" = 1 ]; then
    echo "$(date -Is) slurm_train.sh: requeueing job $SLURM_JOB_ID (the next start resumes)"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
