"""Crash anywhere, resume exactly: kill -9 mid-step, mid-checkpoint-write and at a shard
switch; each resume continues from the newest COMMITTED checkpoint (never a half-written
one) and the losses equal an uninterrupted run's bitwise.

The kills are real SIGKILLs of a child process running ``mmpt train`` (see
reliability_helpers): no cleanup code runs in the victim.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from reliability_helpers import (
    CHECKPOINT_HOOKS,
    HOOKS,
    CrashPoint,
    check_committed_are_complete,
    hook_owner,
    kill_and_resume_trial,
    landed_trial,
    losses,
    random_points,
)

MAX_STEPS = 16
SAVE_EVERY = 3


@pytest.fixture
def reference(reference_run: Callable[..., tuple[Path, list[float]]]) -> tuple[Path, list[float]]:
    """The config and the losses of an uninterrupted run."""
    config, curve = reference_run(max_steps=MAX_STEPS, save_every=SAVE_EVERY)
    assert len(curve) == MAX_STEPS
    return config, curve


def test_every_hook_exists() -> None:
    for name, (module_name, attribute, _) in HOOKS.items():
        assert callable(getattr(hook_owner(module_name), attribute)), name


@pytest.mark.parametrize(
    "points",
    [
        # mid-step (between backward and the optimizer step), then mid-checkpoint-write
        # (tensors written, state.json half written), then at a shard switch
        [CrashPoint("after_backward", 5), CrashPoint("ckpt_half_state_json", 2), CrashPoint("shard_open", 3)],
        # after the rename, before the COMMITTED marker: the newest directory is not committed
        [CrashPoint("ckpt_before_commit", 2)],
        # half-way through deleting an old checkpoint (keep_last pruning)
        [CrashPoint("ckpt_mid_prune", 1)],
    ],
    ids=["step+checkpoint+shard", "before-commit", "mid-prune"],
)
def test_kill_9_then_resume_equals_uninterrupted(
    reference: tuple[Path, list[float]], tmp_path: Path, points: list[CrashPoint]
) -> None:
    config, curve = reference
    result = kill_and_resume_trial(config, tmp_path / "killed", curve, points)
    assert result.killed, result.detail
    assert result.exact, result.detail


@pytest.mark.slow
def test_kill_9_at_20_random_points_resumes_exactly(
    reference: tuple[Path, list[float]], tmp_path: Path
) -> None:
    config, curve = reference
    rng = random.Random(16)
    failures = []
    points = list(random_points(rng, MAX_STEPS, SAVE_EVERY, 20))
    kinds = {p.where for p in points}
    assert kinds & set(CHECKPOINT_HOOKS) and "shard_open" in kinds and "timer" in kinds
    for trial, point in enumerate(points):
        chain = [point]
        if trial % 5 == 4:  # every fifth trial is killed twice before it finishes
            chain.append(next(random_points(rng, MAX_STEPS, SAVE_EVERY, 1)))
        result, chain = landed_trial(config, tmp_path / f"trial{trial}", curve, chain)
        assert result.killed, f"trial {trial}: no kill landed ({[p.describe() for p in chain]})"
        if not result.exact:
            failures.append(f"trial {trial} ({[p.describe() for p in chain]}): {result.detail}")
    assert not failures, failures


def torchrun(*args: str) -> subprocess.Popen[str]:
    """``torchrun --standalone --nproc-per-node 2 -m mmpretrain.cli ARGS`` in its own
    process group (so that kill -9 takes torchrun and both ranks at once)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*command, "-m", "mmpretrain.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finished(process: subprocess.Popen[str], timeout: float = 300) -> None:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]


@pytest.mark.slow
def test_kill_9_on_two_gloo_ranks_resumes_exactly(write_config: Callable[..., Path], tmp_path: Path) -> None:
    """FSDP2 on 2 gloo ranks: kill -9 of torchrun and both ranks at a random step (twice in
    a row), resume at 2 ranks: the losses equal an uninterrupted 2-rank run's bitwise."""
    from mmpretrain.train.metrics import read_metrics

    config = write_config(
        train={"max_steps": 12, "save_every": 2, "batch_size": 2}, distributed={"backend": "fsdp2"}
    )
    finished(torchrun("train", str(config), "--run-dir", str(tmp_path / "full")))
    run_dir = tmp_path / "killed"
    rng = random.Random(2)
    for attempt in range(2):
        resume = ["--resume"] if attempt else []
        process = torchrun("train", str(config), "--run-dir", str(run_dir), *resume)
        kill_at = rng.randint(2 + 4 * attempt, 5 + 4 * attempt)
        deadline = time.monotonic() + 300
        while not (read_metrics(run_dir) and read_metrics(run_dir)[-1]["step"] >= kill_at):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        check_committed_are_complete(run_dir)
    finished(torchrun("train", str(config), "--run-dir", str(run_dir), "--resume"))
    assert losses(run_dir) == losses(tmp_path / "full")
