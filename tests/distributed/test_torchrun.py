"""2 CPU processes under torchrun (gloo): the same global batch gives the 1-rank loss
curve, checkpoints reshard between world sizes, resume is exact at the same world size.

Parity runs use ``parity_worker.py``: every rank trains on its rows of one global batch
stream, so 1 and 2 ranks see exactly the same data and their losses agree to rounding
(stated tolerance: relative 1e-5 over 10 fp32 steps; measured about 1e-7).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mmpretrain.cli import main
from mmpretrain.data.text_pipeline import TextStreamState
from mmpretrain.train.checkpoint import STATE_FILE, committed_checkpoints
from mmpretrain.train.metrics import read_metrics

WORKER = Path(__file__).with_name("parity_worker.py")
RTOL = 1e-5


def losses(run_dir: Path) -> list[float]:
    return [record["loss"] for record in read_metrics(run_dir)]


def torchrun(*args: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node N ARGS`` (fails the test on a non-zero exit)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def parity(
    write_config: Callable[..., Path],
    tmp_path: Path,
    distributed: dict[str, object],
    **sections: dict[str, object],
) -> None:
    """1 process with batch 4 (the plain loop) vs 2 ranks of ``distributed`` with batch 2 each."""
    one = write_config("one.yaml", **sections)
    two = write_config("two.yaml", distributed=distributed, **sections)
    assert main(["train", str(one), "--run-dir", str(tmp_path / "one"), "--set", "train.batch_size=4"]) == 0
    torchrun(str(WORKER), "train", str(two), "--run-dir", str(tmp_path / "two"))
    reference = losses(tmp_path / "one")
    assert len(reference) == 10
    assert losses(tmp_path / "two") == pytest.approx(reference, rel=RTOL)


@pytest.mark.parametrize(
    "distributed",
    [
        pytest.param({"backend": "fsdp2"}, id="fsdp2"),
        pytest.param({"backend": "deepspeed"}, id="zero2"),
        pytest.param({"backend": "ddp"}, id="ddp", marks=pytest.mark.slow),  # (1-process ddp: default run)
        pytest.param({"backend": "deepspeed", "zero_stage": 3}, id="zero3", marks=pytest.mark.slow),
    ],
)
def test_two_ranks_match_one_rank_with_the_same_global_batch(
    distributed: dict[str, object], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    parity(write_config, tmp_path, distributed)


@pytest.mark.slow
def test_kernel_layer_under_fsdp2_on_two_ranks_matches_one_rank(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """Masks are computed from the whole (gathered) weight, so sharding changes nothing."""
    kernels = [{"match": "llm.*.mlp.*", "kind": "sparse24", "update_every": 2}]
    parity(write_config, tmp_path, {"backend": "fsdp2"}, model={"kernels": kernels})


def data_offsets(checkpoint: Path) -> tuple[int, list[dict[str, int]]]:
    state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    ranks = [r["data"] for r in state["ranks"]] if "ranks" in state else [state["data"]]
    return state["world_size"], ranks


def continuing(ranks: list[dict[str, int]]) -> int:
    return TextStreamState.continuing([TextStreamState.from_dict(d) for d in ranks]).offset


def test_resume_reshards_one_to_two_to_one_rank_and_exports(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """1 process -> `mmpt train --nproc 2 --resume` -> 1 process: each start loads the
    previous world size's sharded checkpoint and continues its data from the earliest
    global position any rank had not finished; the sharded checkpoint exports to a
    transformers model holding its weights."""
    import transformers

    from mmpretrain.export.gather import read_checkpoint_tensors

    config = write_config(train={"max_steps": 9, "save_every": 3}, distributed={"backend": "fsdp2"})
    run_dir = tmp_path / "run"
    base = ["train", str(config), "--run-dir", str(run_dir), "--set", "train.stop_after_steps=3"]
    assert main(base) == 0
    assert main([*base, "--resume", "--nproc", "2"]) == 0
    assert main([*base, "--resume"]) == 0
    checkpoints = committed_checkpoints(run_dir)
    assert [p.name for p in checkpoints] == ["step_0000003", "step_0000006", "step_0000009"]
    layouts = [data_offsets(p) for p in checkpoints]
    assert [world for world, _ in layouts] == [1, 2, 1]
    # each start continued from the earliest unfinished global document of the one before
    assert {d["offset"] for d in layouts[1][1]} == {continuing(layouts[0][1])}
    assert layouts[2][1][0]["offset"] == continuing(layouts[1][1])
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 10))
    assert all(torch.isfinite(torch.tensor(losses(run_dir))))
    sharded = checkpoints[1]
    assert sorted(p.name for p in (sharded / "tensors").glob("*.safetensors")) == [
        "shard-00001-model-00001-of-00001.safetensors",
        "shard-00002-model-00001-of-00001.safetensors",
    ]
    assert main(["export", str(sharded), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    ours = read_checkpoint_tensors(sharded)
    for name, tensor in model.state_dict().items():
        if f"llm.{name}" in ours:
            assert torch.equal(tensor, ours[f"llm.{name}"].to(tensor.dtype)), name


@pytest.mark.slow
def test_stop_and_resume_on_two_ranks_is_bitwise_exact(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config(train={"max_steps": 6, "save_every": 3}, distributed={"backend": "fsdp2"})
    torchrun("-m", "mmpretrain.cli", "train", str(config), "--run-dir", str(tmp_path / "full"))
    split = ["-m", "mmpretrain.cli", "train", str(config), "--run-dir", str(tmp_path / "split")]
    torchrun(*split, "--set", "train.stop_after_steps=3")
    torchrun(*split, "--resume")
    assert losses(tmp_path / "split") == losses(tmp_path / "full")


@pytest.mark.slow
def test_async_checkpoints_on_two_ranks_commit_and_reload_at_one(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config(
        train={"max_steps": 6, "save_every": 2}, distributed={"backend": "fsdp2", "async_checkpoint": True}
    )
    run = ["-m", "mmpretrain.cli", "train", str(config), "--run-dir", str(tmp_path / "run")]
    torchrun(*run, "--set", "train.stop_after_steps=4")
    assert [p.name for p in committed_checkpoints(tmp_path / "run")] == ["step_0000002", "step_0000004"]
    assert main(["train", str(config), "--run-dir", str(tmp_path / "run"), "--resume"]) == 0
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == list(range(1, 7))


@pytest.mark.slow
def test_sigusr1_to_mmpt_nproc_saves_on_every_rank_and_resumes(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """SIGUSR1 (a scheduler's preemption notice) to `mmpt train --nproc 2` reaches both
    ranks through torchrun; they agree on the step, save one checkpoint and stop; --resume
    continues. (SIGTERM takes the same path; torchrun forwards it by default.)"""
    config = write_config(
        train={"max_steps": 400, "save_every": 1000, "log_every": 1}, distributed={"backend": "fsdp2"}
    )
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "mmpretrain.cli",
        "train",
        str(config),
        "--run-dir",
        str(run_dir),
        "--nproc",
        "2",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not read_metrics(run_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    process.send_signal(signal.SIGUSR1)
    output, _ = process.communicate(timeout=240)
    assert "received SIGUSR1: saved" in output, output[-3000:]
    checkpoints = committed_checkpoints(run_dir)
    assert len(checkpoints) == 1 and data_offsets(checkpoints[0])[0] == 2
    stopped = int(checkpoints[0].name.removeprefix("step_"))
    assert 0 < stopped < 400
    resumed = [
        "train", str(config), "--run-dir", str(run_dir), "--resume", "--set", "train.stop_after_steps=1",
    ]  # fmt: skip
    assert main(resumed) == 0
    assert read_metrics(run_dir)[-1]["step"] == stopped + 1
