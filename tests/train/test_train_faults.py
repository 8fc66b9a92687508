"""Faults in a real process: kill -9 at a random step, and SIGTERM, then resume exactly."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mmpretrain.cli import main
from mmpretrain.train.checkpoint import committed_checkpoints
from mmpretrain.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]


def start_training(config: Path, run_dir: Path, *extra: str) -> subprocess.Popen[str]:
    # one thread like the in-process runs, so float results are bitwise comparable
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "mmpretrain.cli",
        "train",
        str(config),
        "--run-dir",
        str(run_dir),
        *extra,
    ]
    return subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for_step(process: subprocess.Popen[str], run_dir: Path, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = read_metrics(run_dir)
        if records and records[-1]["step"] >= step:
            return
        assert process.poll() is None, process.communicate()[0]
        time.sleep(0.01)
    raise AssertionError(f"training did not reach step {step} in {timeout} s")


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir)]


def test_kill_9_at_a_random_step_then_resume_equals_uninterrupted(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    # slow the steps down a little (bigger batch) so the kill lands mid-run, then resume
    config = write_config(train={"max_steps": 40, "save_every": 3, "batch_size": 8, "seq_len": 128})
    assert main(["train", str(config), "--run-dir", str(tmp_path / "full")]) == 0
    kill_at = random.Random(0).randint(4, 30)  # where the kill lands after it still varies with timing
    process = start_training(config, tmp_path / "killed")
    wait_for_step(process, tmp_path / "killed", kill_at)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    committed = committed_checkpoints(tmp_path / "killed")
    assert committed, "no checkpoint committed before the kill"
    assert main(["train", str(config), "--run-dir", str(tmp_path / "killed"), "--resume"]) == 0
    assert losses(tmp_path / "killed") == losses(tmp_path / "full"), f"killed at step >= {kill_at}"


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config(train={"max_steps": 10_000, "save_every": 10_000, "batch_size": 8, "seq_len": 128})
    process = start_training(config, tmp_path / "run")
    wait_for_step(process, tmp_path / "run", 3)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "received SIGTERM: saved" in output and "continue with --resume" in output
    (newest,) = committed_checkpoints(tmp_path / "run")
    assert int(newest.name.removeprefix("step_")) == read_metrics(tmp_path / "run")[-1]["step"] >= 3
