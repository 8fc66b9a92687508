"""The one end-to-end smoke test of the default suite: `mmpt demo --quick`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmpretrain.cli import main
from mmpretrain.eval.model_io import load_for_eval
from mmpretrain.model.multimodal import MultimodalLM
from mmpretrain.train.checkpoint import committed_checkpoints


def test_demo_quick_builds_trains_evaluates_exports_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    # a fresh interpreter (one torch thread, as here): the demo's scores must not depend on
    # what other tests in this worker left behind in the process
    runner = (
        "import sys, torch; torch.set_num_threads(1); "
        "from mmpretrain.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", runner, "demo", "--quick", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    printed = done.stdout
    expected = (
        "demo summary (--quick)",
        "few-shot",
        "learned:",
        "export",
        "TensorBoard",
        "packing efficiency",
    )
    for line in expected:
        assert line in printed

    # data: the demo shards with a held-out split, Shakespeare and the derived sources
    for name in ("demo", "demo/heldout", "text", "qa", "align", "grid", "demo_text"):
        assert list((out / "data" / name).glob("shard-*.tar")), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["qa"] > 0 and summary["data"]["heldout"] > 0

    # training: three stages, connector alignment with the LLM and encoders frozen,
    # Shakespeare replayed in the last stage, 2:4-sparse MLPs
    stages = summary["stages"]
    assert list(stages) == ["llm", "align", "full"]
    assert stages["align"]["frozen"] == ["encoders", "llm"]
    assert stages["full"]["frozen"] == []
    assert stages["full"]["token_share"]["text"] > 0
    assert stages["full"]["loss_last_mean10"] < stages["full"]["loss_first"]
    assert summary["model"]["kernels"]["kinds"] == ["sparse24"] and summary["model"]["kernels"]["modules"] > 0
    for stage in ("00-llm", "01-align", "02-full"):
        assert committed_checkpoints(out / "train" / "stages" / stage), stage

    # evaluation: trained vs untrained vs chance; at least one task learned
    for report in ("trained", "untrained", "chance"):
        assert json.loads((out / "train" / "eval" / f"{report}.json").read_text())["results"]
    tasks = summary["tasks"]
    assert set(tasks) >= {"shapes_classify", "shapes_count"}
    beats = [
        name
        for name, t in tasks.items()
        if t["chance"] is not None and t["trained"] > t["untrained"] and t["trained"] > t["chance"]
    ]
    assert beats, tasks
    # "learned" also needs the answer prior beaten (always the most frequent answer)
    above_prior = [name for name in beats if tasks[name]["trained"] > tasks[name]["majority"]]
    assert [name for name, ok in summary["learned"].items() if ok] == above_prior

    # plots: PNG files
    plots = [Path(p) for p in summary["plots"].values()]
    assert len(plots) >= 2
    for plot in plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # export: the native format reloads and runs; transformers refused with the reasons
    native = Path(summary["exports"]["native"]["path"])
    model = MultimodalLM.from_pretrained(str(native))
    assert sum(p.numel() for p in model.parameters()) == summary["model"]["parameters"]
    assert summary["exports"]["hf"]["path"] is None and summary["exports"]["hf"]["reason"]
    trained = load_for_eval(out / "train" / "stages" / "02-full", "cpu").model.state_dict()
    exported = model.state_dict()
    assert set(exported) == set(trained)
    for name, tensor in exported.items():
        assert torch.equal(tensor, trained[name]), name


def test_demo_refuses_a_directory_that_holds_something_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 2
    assert "holds no earlier demo" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "mine"
