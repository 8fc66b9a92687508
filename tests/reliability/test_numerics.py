"""Numerics: NaN/inf in the loss or the gradients follow train.nan_policy (raise naming
the step and the sample keys, or skip and count up to train.max_nan_skips); loss spikes
are scored (z-score over a window) and logged; the gradient norm is logged."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import losses, run_quietly, train_argv

from mmpretrain.cli import main
from mmpretrain.train import loop as loop_module
from mmpretrain.train.metrics import read_metrics
from mmpretrain.train.spikes import LossSpikeDetector


def poison(
    monkeypatch: pytest.MonkeyPatch, calls: set[int], kind: str = "loss", factor: float = math.nan
) -> list[list[str]]:
    """Make the loss (``kind="loss"``) or the gradients (``"grad"``) of the given forward
    calls (1-based) non-finite, or scale the loss (``"scale"``). Returns the sample keys
    of every batch the loop drew, in order."""
    real_loss = loop_module.token_loss_sum
    real_stream = loop_module.batch_stream
    count = {"n": 0}
    drawn: list[list[str]] = []

    def token_loss_sum(logits: Any, labels: Any) -> Any:
        count["n"] += 1
        loss_sum, tokens = real_loss(logits, labels)
        if count["n"] in calls:
            if kind == "grad":
                logits.register_hook(lambda grad: grad * math.inf)
            else:
                loss_sum = loss_sum * factor
        return loss_sum, tokens

    def batch_stream(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for batch, state in real_stream(*args, **kwargs):
            drawn.append([key for row in batch.keys for key in row])
            yield batch, state

    monkeypatch.setattr(loop_module, "token_loss_sum", token_loss_sum)
    monkeypatch.setattr(loop_module, "batch_stream", batch_stream)
    return drawn


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_non_finite_step_raises_naming_the_step_and_its_samples(
    write_config: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    drawn = poison(monkeypatch, {3}, kind)
    config = write_config(train={"max_steps": 6})
    assert main(train_argv(config, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at step 3" in err and "train.nan_policy=skip" in err, err
    if kind == "loss":
        assert "non-finite loss nan" in err
    else:  # a finite loss with infinite gradients
        assert "grad norm inf" in err or "grad norm nan" in err
    third = drawn[2]
    assert third and all(key in err for key in third[:2]), (third, err)  # the step's own samples
    assert not any(key in err for key in drawn[1] if key not in third)


def test_skip_policy_counts_and_keeps_weights_finite(
    write_config: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison(monkeypatch, {3}, "loss")
    poison(monkeypatch, {5}, "grad")
    config = write_config(train={"max_steps": 8, "nan_policy": "skip", "max_nan_skips": 2})
    code, output = run_quietly(train_argv(config, tmp_path / "run"))
    assert code == 0, output
    records = read_metrics(tmp_path / "run")
    assert [r["nan_skips"] for r in records] == [0, 0, 1, 1, 2, 2, 2, 2]
    assert output.count("step skipped") == 2
    # the skipped steps changed nothing: every later loss and gradient is finite
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records[5:])


def test_skip_limit_stops_the_run(
    write_config: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    poison(monkeypatch, {2, 4}, "loss")
    config = write_config(train={"max_steps": 8, "nan_policy": "skip", "max_nan_skips": 1})
    assert main(train_argv(config, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at step 4" in err and "2 non-finite steps skipped" in err, err


def test_loss_spike_is_scored_logged_and_counted(
    write_config: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison(monkeypatch, {14}, "scale", factor=3.0)  # loss x3 at step 14
    config = write_config(train={"max_steps": 16})
    code, output = run_quietly(train_argv(config, tmp_path / "run"))
    assert code == 0, output
    records = read_metrics(tmp_path / "run")
    assert all("loss_z" in r and "loss_spikes" in r for r in records)
    assert [r["loss_spikes"] for r in records] == [0] * 13 + [1] * 3
    assert records[13]["loss_z"] > 4 and all(abs(r["loss_z"]) < 4 for r in records[:13])
    assert "warning: loss spike at step 14" in output
    # the gradient norm is logged at every step (before clipping), finite and positive
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in records)


def test_spike_metrics_resume_exactly(write_config: Callable[..., Path], tmp_path: Path) -> None:
    config = write_config(train={"max_steps": 16})
    assert run_quietly(train_argv(config, tmp_path / "full"))[0] == 0
    assert run_quietly(train_argv(config, tmp_path / "run", "--set", "train.stop_after_steps=12"))[0] == 0
    assert run_quietly(train_argv(config, tmp_path / "run", "--resume"))[0] == 0
    assert losses(tmp_path / "run") == losses(tmp_path / "full")
    spikes = [(r["loss_z"], r["loss_spikes"]) for r in read_metrics(tmp_path / "run")]
    assert spikes == [(r["loss_z"], r["loss_spikes"]) for r in read_metrics(tmp_path / "full")]


def test_spike_detector_scores_against_the_window() -> None:
    warnings: list[str] = []
    detector = LossSpikeDetector(window=5, threshold=3.0, min_history=3, warn=warnings.append)
    assert detector.update(1, 2.0) == {"loss_z": 0.0, "loss_spikes": 0}  # not enough history
    for step, loss in enumerate([2.1, 1.9, 2.0], start=2):
        detector.update(step, loss)
    # window [2.0, 2.1, 1.9, 2.0]: mean 2.0, std ~0.0707
    assert detector.z_score(2.0) == 0.0 and detector.z_score(2.1) == pytest.approx(1.414, rel=1e-3)
    result = detector.update(5, 3.0)
    assert result["loss_spikes"] == 1 and result["loss_z"] == pytest.approx(14.14, rel=1e-3)
    assert warnings == [
        "warning: loss spike at step 5: loss 3.0000 is 14.1 standard deviations above the mean "
        "2.0000 of the last 4 logged losses (1 so far)"
    ]
    assert detector.update(6, math.nan) == {"loss_z": 0.0, "loss_spikes": 1}  # skipped step: ignored
    assert detector.update(7, 1.0)["loss_z"] < 0 and detector.spikes == 1  # drops are no spikes
    flat = LossSpikeDetector(window=4, threshold=3.0, min_history=2)
    for step in range(5):
        assert flat.update(step, 1.5)["loss_z"] == 0.0  # a flat window scores 0, never inf


def test_spike_detector_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        LossSpikeDetector(window=5, min_history=6)
    with pytest.raises(ValueError):
        LossSpikeDetector(threshold=0)
