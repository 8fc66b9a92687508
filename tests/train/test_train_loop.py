"""The training loop: loss goes down, golden curve, exact resume, run directory rules."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from mmpretrain.cli import main
from mmpretrain.config import load_config
from mmpretrain.train import checkpoint as checkpoint_module
from mmpretrain.train import loop as loop_module
from mmpretrain.train.checkpoint import COMMITTED, committed_checkpoints
from mmpretrain.train.loop import train
from mmpretrain.train.metrics import read_metrics

# Losses of the first 10 steps of the default tiny run (seed 0, fp32, CPU). A change here
# means the numerics changed: if that was intended, update the numbers in the same commit.
GOLDEN_LOSSES = [
    5.77739599609375,
    5.706412406589674,
    5.586249457465278,
    5.462000286768353,
    5.349643767826141,
    5.23939593189741,
    5.211817767990538,
    5.138041178385417,
    5.100401839589685,
    5.098103350903615,
]


def losses(run_dir: Path) -> list[float]:
    return [record["loss"] for record in read_metrics(run_dir)]


def run(config: Path, run_dir: Path, *extra: str) -> int:
    return main(["train", str(config), "--run-dir", str(run_dir), *extra])


def test_short_run_lowers_the_loss(write_config: Callable[..., Path], tmp_path: Path) -> None:
    config = write_config(train={"max_steps": 30})
    assert run(config, tmp_path / "run") == 0
    curve = losses(tmp_path / "run")
    assert len(curve) == 30
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 0.5


def test_golden_loss_curve(write_config: Callable[..., Path], tmp_path: Path) -> None:
    assert run(write_config(train={"max_steps": 10}), tmp_path / "run") == 0
    assert losses(tmp_path / "run") == pytest.approx(GOLDEN_LOSSES, rel=1e-5, abs=1e-5)


def test_run_directory_contents(write_config: Callable[..., Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert run(write_config(train={"max_steps": 5, "save_every": 2, "keep_last": 2}), run_dir) == 0
    record = read_metrics(run_dir)[-1]
    for key in ("step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "packing_efficiency"):
        assert key in record
    assert record["step"] == 5 and record["tokens"] > 0 and 0.5 < record["packing_efficiency"] <= 1
    assert (run_dir / "config.yaml").is_file()
    environment = json.loads((run_dir / "environment.json").read_text())
    assert environment["packages"]["torch"] and "config_hash" in environment
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    # keep_last=2 of the committed checkpoints at steps 2, 4, 5
    assert [p.name for p in committed_checkpoints(run_dir)] == ["step_0000004", "step_0000005"]
    assert (committed_checkpoints(run_dir)[-1] / COMMITTED).read_text().strip() == "5"


def test_existing_run_dir_needs_resume_or_overwrite(
    write_config: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(train={"max_steps": 2})
    assert run(config, tmp_path / "run") == 0
    assert run(config, tmp_path / "run") == 2
    assert "pass --resume to continue it or --overwrite" in capsys.readouterr().err
    assert run(config, tmp_path / "run", "--overwrite") == 0
    assert len(losses(tmp_path / "run")) == 2


def test_stop_after_then_resume_equals_uninterrupted_bitwise(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config()
    assert run(config, tmp_path / "full") == 0
    assert run(config, tmp_path / "split", "--set", "train.stop_after_steps=6") == 0
    assert [p.name for p in committed_checkpoints(tmp_path / "split")][-1] == "step_0000006"
    assert len(losses(tmp_path / "split")) == 6
    assert run(config, tmp_path / "split", "--resume") == 0
    assert losses(tmp_path / "split") == losses(tmp_path / "full")  # bitwise: exact float equality


def test_changed_config_resume_exits_2_naming_keys(
    write_config: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config()
    assert run(config, tmp_path / "run", "--set", "train.stop_after_steps=2") == 0
    code = run(config, tmp_path / "run", "--resume", "--set", "optim.lr=0.5", "--set", "train.seed=3")
    assert code == 2
    assert "differs from the saved one in optim.lr, train.seed" in capsys.readouterr().err
    # run-control keys may change
    assert run(config, tmp_path / "run", "--resume", "--set", "train.log_every=3") == 0


def test_grad_accumulation_equals_the_larger_batch(write_config: Callable[..., Path], tmp_path: Path) -> None:
    big = write_config("big.yaml", train={"max_steps": 4, "batch_size": 8})
    accumulated = write_config("acc.yaml", train={"max_steps": 4, "batch_size": 4, "grad_accum": 2})
    assert run(big, tmp_path / "big") == 0
    assert run(accumulated, tmp_path / "acc") == 0
    assert losses(tmp_path / "acc") == pytest.approx(losses(tmp_path / "big"), rel=1e-5)
    big_tokens = [r["tokens"] for r in read_metrics(tmp_path / "big")]
    assert [r["tokens"] for r in read_metrics(tmp_path / "acc")] == big_tokens


def test_crash_during_checkpoint_write_keeps_previous_usable(
    write_config: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path = write_config(train={"max_steps": 12, "save_every": 4})
    config = load_config(config_path)
    train(config, tmp_path / "full")
    real_replace = checkpoint_module.os.replace

    def crash_on_second_rename(src: str, dst: str) -> None:
        if str(dst).endswith("step_0000008"):
            raise KeyboardInterrupt("simulated kill during checkpoint write")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "run")
    monkeypatch.undo()
    names = [p.name for p in committed_checkpoints(tmp_path / "run")]
    assert names == ["step_0000004"]  # the half-written step 8 is not committed
    assert (tmp_path / "run" / "checkpoints" / ".tmp-step_0000008").is_dir()
    train(config, tmp_path / "run", resume=True)
    assert losses(tmp_path / "run") == losses(tmp_path / "full")
    assert not (tmp_path / "run" / "checkpoints" / ".tmp-step_0000008").exists()


def test_uncommitted_checkpoint_is_ignored_and_corrupt_one_is_an_error(
    write_config: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(train={"max_steps": 8, "save_every": 4})
    assert run(config, tmp_path / "run", "--set", "train.stop_after_steps=8") == 0
    newest = committed_checkpoints(tmp_path / "run")[-1]
    (newest / COMMITTED).unlink()  # as if killed before the marker was written
    assert [p.name for p in committed_checkpoints(tmp_path / "run")] == ["step_0000004"]
    (
        tmp_path / "run" / "checkpoints" / "step_0000004" / "tensors" / "model-00001-of-00001.safetensors"
    ).write_bytes(b"garbage")
    assert run(config, tmp_path / "run", "--resume") == 2
    err = capsys.readouterr().err
    assert "checkpoint" in err and "corrupt or incomplete" in err and err.count("\n") == 1


def test_nan_loss_raise_and_skip_policies(
    write_config: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real = loop_module.token_loss_sum
    calls = {"n": 0}

    def nan_on_third_call(logits, labels):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        loss_sum, count = real(logits, labels)
        return (loss_sum * math.nan if calls["n"] == 3 else loss_sum), count

    monkeypatch.setattr(loop_module, "token_loss_sum", nan_on_third_call)
    config = write_config(train={"max_steps": 6})
    assert run(config, tmp_path / "raise") == 2
    err = capsys.readouterr().err
    assert "non-finite loss nan" in err and "at step 3" in err and "train.nan_policy=skip" in err
    calls["n"] = 0
    assert run(config, tmp_path / "skip", "--set", "train.nan_policy=skip") == 0
    records = read_metrics(tmp_path / "skip")
    assert len(records) == 6 and records[-1]["nan_skips"] == 1
    calls["n"] = 0
    assert (
        run(config, tmp_path / "limit", "--set", "train.nan_policy=skip", "--set", "train.max_nan_skips=0")
        == 2
    )


def test_data_errors_are_one_line(
    write_config: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = write_config(
        "missing.yaml", data={"sources": [{"format": "jsonl", "paths": [str(tmp_path / "no.jsonl")]}]}
    )
    assert run(missing, tmp_path / "a") == 2
    assert "no.jsonl" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    empty = write_config(
        "empty.yaml", data={"sources": [{"format": "text", "paths": [str(tmp_path / "empty.txt")]}]}
    )
    assert run(empty, tmp_path / "b") == 2
    assert "empty" in capsys.readouterr().err


def test_small_vocab_is_a_config_error(
    write_config: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config()
    assert run(config, tmp_path / "run", "--set", "model.llm.vocab_size=100") == 2
    assert "model.llm.vocab_size 100 is smaller than the tokenizer's 308 tokens" in capsys.readouterr().err
