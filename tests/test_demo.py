"""The one end-to-end smoke test of the default suite: `mmpt demo --quick`."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmpretrain.cli import main
from mmpretrain.train.checkpoint import committed_checkpoints
from mmpretrain.train.metrics import read_metrics


def test_demo_quick_trains_evaluates_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "demo" / "text"
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    assert records[-1]["loss"] < records[0]["loss"]
    assert committed_checkpoints(run_dir)
    assert (run_dir / "tokenizer" / "tokenizer.json").is_file()
    for line in ("demo summary", "held-out loss", "packing", "sample", "TensorBoard"):
        assert line in out
    (summary_line,) = [line for line in out.splitlines() if line.startswith("  held-out loss")]
    heldout = float(summary_line.split()[2])
    assert 0 < heldout < 7.0  # an untrained model scores about log(2008 tokens) = 7.6
