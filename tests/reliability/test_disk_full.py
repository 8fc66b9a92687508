"""Full disks during a save: the previous checkpoint stays intact, the error is one clear
line (exit 2), the run resumes exactly; keep-last-N never deletes the only good checkpoint.

ENOSPC is injected in-process where each part of a checkpoint is written (the tensors
inside torch.distributed.checkpoint's writer, state.json, the COMMITTED marker), and for
real with RLIMIT_FSIZE in a forked child (the kernel then fails the write with EFBIG).
"""

from __future__ import annotations

import errno
import hashlib
import resource
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import (
    CrashPoint,
    check_committed_are_complete,
    checkpoint_listing,
    losses,
    run_crash_child,
    run_quietly,
    train_argv,
)

from mmpretrain.cli import main
from mmpretrain.train import checkpoint as checkpoint_module
from mmpretrain.train.checkpoint import COMMITTED, committed_checkpoints, prune_checkpoints

MAX_STEPS = 9


def no_space(path: object = None) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", None if path is None else str(path))


def tree_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def reference(reference_run: Callable[..., tuple[Path, list[float]]]) -> tuple[Path, list[float]]:
    return reference_run(max_steps=MAX_STEPS, save_every=3)


def fail_second_save(
    monkeypatch: pytest.MonkeyPatch, where: str, run_dir: Path, first_saved: list[str]
) -> None:
    """Make the second checkpoint write fail with ENOSPC at ``where``; ``first_saved``
    receives the digest of the first checkpoint right after it committed."""
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    saves = {"n": 0}
    real_flat = checkpoint_module._flat_tensors

    def counting_flat(*args: Any, **kwargs: Any) -> Any:
        saves["n"] += 1
        if saves["n"] == 2:  # the first checkpoint is committed by now
            (first,) = committed_checkpoints(run_dir)
            first_saved.append(tree_digest(first))
        return real_flat(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "_flat_tensors", counting_flat)
    if where == "tensors":
        real_write = HuggingFaceStorageWriter.write_data

        def write_data(self: Any, plan: Any, planner: Any) -> Any:
            if saves["n"] == 2:
                raise no_space()
            return real_write(self, plan, planner)

        monkeypatch.setattr(HuggingFaceStorageWriter, "write_data", write_data)
    elif where == "state_json":
        real_json = checkpoint_module._write_json

        def write_json(path: Path, data: dict[str, Any]) -> None:
            if saves["n"] == 2:
                path.write_text('{"format_version": 1, "st', encoding="utf-8")  # what fitted
                raise no_space(path)
            real_json(path, data)

        monkeypatch.setattr(checkpoint_module, "_write_json", write_json)
    else:
        real_write_text = Path.write_text

        def write_text(self: Path, *args: Any, **kwargs: Any) -> int:
            if self.name == COMMITTED and saves["n"] == 2:
                raise no_space(self)
            return real_write_text(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)


@pytest.mark.parametrize("where", ["tensors", "state_json", "commit_marker"])
def test_enospc_during_a_save_keeps_the_previous_checkpoint_and_resumes(
    reference: tuple[Path, list[float]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    where: str,
) -> None:
    config, curve = reference
    run_dir = tmp_path / "run"
    first_saved: list[str] = []
    fail_second_save(monkeypatch, where, run_dir, first_saved)
    capsys.readouterr()
    assert main(train_argv(config, run_dir, "--set", "train.keep_last=1")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: No space left on device") and "continue with --resume" in err, err
    monkeypatch.undo()

    # the only good checkpoint (keep_last=1) is intact, byte for byte
    (first,) = committed_checkpoints(run_dir)
    assert first.name == "step_0000003" and [tree_digest(first)] == first_saved
    check_committed_are_complete(run_dir)
    code, output = run_quietly(train_argv(config, run_dir, "--resume", "--set", "train.keep_last=1"))
    assert code == 0, output
    assert f"resumed from {first} (step 3)" in output
    assert losses(run_dir) == curve
    assert checkpoint_listing(run_dir) == [f"step_{MAX_STEPS:07d}"]


def test_file_size_limit_in_a_real_process_fails_cleanly_then_resumes(
    reference: tuple[Path, list[float]], tmp_path: Path
) -> None:
    """RLIMIT_FSIZE set after the first checkpoint: the kernel fails the next checkpoint's
    tensor file with EFBIG; the child exits 2 with one line, the first checkpoint stays."""
    config, curve = reference
    run_dir = tmp_path / "run"

    def limit_after_first_save() -> None:
        real = checkpoint_module._flat_tensors
        calls = {"n": 0}

        def limited(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 2:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing
                resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
            return real(*args, **kwargs)

        checkpoint_module._flat_tensors = limited  # the forked child's copy only

    result = run_crash_child(
        train_argv(config, run_dir),
        CrashPoint("timer", delay=1e9),  # never killed: it must exit by itself
        tmp_path / "child.log",
        started=lambda: False,
        before_main=limit_after_first_save,
    )
    assert result.exit_code == 2, result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "Traceback" not in result.output, result.output
    assert "File too large" in error_lines[0] and "--resume" in error_lines[0]
    assert [p.name for p in committed_checkpoints(run_dir)] == ["step_0000003"]
    check_committed_are_complete(run_dir)
    code, output = run_quietly(train_argv(config, run_dir, "--resume"))
    assert code == 0, output
    assert losses(run_dir) == curve


def make_checkpoint_dirs(run_dir: Path, committed: list[int], uncommitted: list[str]) -> None:
    root = run_dir / "checkpoints"
    for step in committed:
        (root / f"step_{step:07d}").mkdir(parents=True)
        (root / f"step_{step:07d}" / COMMITTED).write_text(f"{step}\n")
    for name in uncommitted:
        (root / name).mkdir(parents=True)


def test_keep_last_never_deletes_the_only_good_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # newer writes that never committed (a full disk, a kill) do not count as good ones
    make_checkpoint_dirs(run_dir, [3, 6], [".tmp-step_0000012", "step_0000009"])
    for keep_last in (1, 0, -1):  # the config refuses < 1; the function still keeps one
        prune_checkpoints(run_dir, keep_last)
        assert [p.name for p in committed_checkpoints(run_dir)] == ["step_0000006"]
    # leftovers newer than the newest committed one may be a save in progress: kept
    assert checkpoint_listing(run_dir) == [".tmp-step_0000012", "step_0000006", "step_0000009"]
    make_checkpoint_dirs(run_dir, [15], [])
    prune_checkpoints(run_dir, 2)
    assert checkpoint_listing(run_dir) == ["step_0000006", "step_0000015"]
