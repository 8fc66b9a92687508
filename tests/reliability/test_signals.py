"""SIGTERM, SIGINT and SIGUSR1 (preemption notices, Ctrl-C, a scheduler's warning signal)
end a run with a final checkpoint and exit 0 within a grace period; a signal that arrives
while a checkpoint is being written lets it finish; a second SIGINT interrupts at once.
Every case then resumes to the uninterrupted run's losses, bitwise."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from reliability_helpers import (
    CrashPoint,
    check_committed_are_complete,
    losses,
    run_crash_child,
    run_quietly,
    train_argv,
)

from mmpretrain.train.checkpoint import committed_checkpoints
from mmpretrain.train.metrics import read_metrics

# Slow (make test-all): three more crash children; the default suite keeps the
# subprocess-based SIGTERM test in tests/train/test_train_faults.py. (These once failed
# after other tests in the same worker had run torch: the children were forked copies of
# the test process; they are fresh interpreters now, see run_crash_child.)
pytestmark = pytest.mark.slow

MAX_STEPS = 30
GRACE_S = 30.0
"""Longest wait from the signal to the exit: the current step plus one checkpoint (well
under a second for these runs; schedulers typically grant 30 s or more)."""


@pytest.fixture
def reference(reference_run: Callable[..., tuple[Path, list[float]]]) -> tuple[Path, list[float]]:
    # save_every above max_steps: the only checkpoints are the signal's and the final one
    return reference_run(max_steps=MAX_STEPS, save_every=1000, batch_size=4)


def resume_exactly(config: Path, run_dir: Path, curve: list[float]) -> None:
    check_committed_are_complete(run_dir)
    code, output = run_quietly(train_argv(config, run_dir, "--resume"))
    assert code == 0, output
    assert losses(run_dir) == curve


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1], ids=lambda s: s.name)
def test_stop_signal_saves_a_final_checkpoint_and_exits_cleanly(
    reference: tuple[Path, list[float]], tmp_path: Path, signum: signal.Signals
) -> None:
    config, curve = reference
    run_dir = tmp_path / "run"
    result = run_crash_child(
        train_argv(config, run_dir),
        CrashPoint("timer", signum=signum),
        tmp_path / "child.log",
        started=lambda: len(read_metrics(run_dir)) >= 3,
    )
    assert result.exit_code == 0, result.output
    assert result.seconds_after_signal is not None and result.seconds_after_signal < GRACE_S
    assert f"received {signum.name}: saved" in result.output and "continue with --resume" in result.output
    (newest,) = committed_checkpoints(run_dir)
    last = read_metrics(run_dir)[-1]["step"]
    assert int(newest.name.removeprefix("step_")) == last and 3 <= last < MAX_STEPS
    resume_exactly(config, run_dir, curve)


def test_signal_during_a_checkpoint_write_lets_it_finish(
    reference_run: Callable[..., tuple[Path, list[float]]], tmp_path: Path
) -> None:
    config, curve = reference_run(max_steps=12, save_every=3)
    run_dir = tmp_path / "run"
    # SIGTERM arrives between writing the second checkpoint's files and its rename
    result = run_crash_child(
        train_argv(config, run_dir),
        CrashPoint("ckpt_before_rename", 2, signum=signal.SIGTERM),
        tmp_path / "child.log",
    )
    assert result.exit_code == 0, result.output
    assert "received SIGTERM: saved" in result.output
    committed = [p.name for p in committed_checkpoints(run_dir)]
    last = read_metrics(run_dir)[-1]["step"]
    # the interrupted write committed; the run stopped at once (or, where ranks agree on
    # stopping at the next step boundary, one step later) with a checkpoint of its last step
    assert committed[:2] == ["step_0000003", "step_0000006"] and committed[-1] == f"step_{last:07d}"
    assert last in (6, 7)
    resume_exactly(config, run_dir, curve)


def test_second_sigint_interrupts_at_once(reference: tuple[Path, list[float]], tmp_path: Path) -> None:
    config, curve = reference
    run_dir = tmp_path / "run"
    code, output = run_quietly(train_argv(config, run_dir, "--set", "train.stop_after_steps=4"))
    assert code == 0, output
    # Ctrl-C twice in the middle of step 7 (a forward pass of the resumed run)
    result = run_crash_child(
        train_argv(config, run_dir, "--resume"),
        CrashPoint("forward", 3, signum=signal.SIGINT, times=2),
        tmp_path / "child.log",
    )
    assert result.exit_code == 130, result.output
    assert result.output.rstrip().endswith("interrupted")
    assert [p.name for p in committed_checkpoints(run_dir)] == ["step_0000004"]
    resume_exactly(config, run_dir, curve)
