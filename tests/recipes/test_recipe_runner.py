"""Running recipes: stage directories, branches from kept checkpoints, held-out curves and
the summary; monitoring does not change training; a recipe resumed in the middle of its
second stage ends bitwise where an uninterrupted one does; stage boundaries switch the
trainable parameters and the data mix exactly at the first step of the new stage."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from mmpretrain.cli import main
from mmpretrain.recipes.config import Recipe
from mmpretrain.recipes.monitor import evaluate, load_stage_model, read_jsonl
from mmpretrain.recipes.runner import run_recipe
from mmpretrain.train.init_from import _read_dcp_tensors
from mmpretrain.train.metrics import read_metrics
from mmpretrain.train.schedule import lr_at


def losses(run_dir: Path, stage: str) -> list[float]:
    return [r["loss"] for r in read_metrics(next((run_dir / "stages").glob(f"*-{stage}")))]


def final_tensors(run_dir: Path, stage: str) -> dict[str, torch.Tensor]:
    directory = next((run_dir / "stages").glob(f"*-{stage}"))
    return _read_dcp_tensors(sorted((directory / "checkpoints").glob("step_*"))[-1], "model.")


def test_a_wsd_recipe_with_a_branched_cooldown_runs_from_the_cli(
    tiny_recipe: Callable[..., Recipe], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tiny_recipe("wsd_cooldown", stage_steps={"stable": 4}, every=2)
    path = tmp_path / "wsd.yaml"
    path.write_text(yaml.safe_dump(recipe.data(), sort_keys=False), encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", str(path), "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "recipe stages:" in out and "held-out loss (nats; perplexity)" in out
    assert sorted(p.name for p in (run / "stages").iterdir()) == [
        "00-stable",
        "01-cooldown_mid",
        "02-cooldown",
    ]
    assert (run / "stages/00-stable/kept/step_0000002/COMMITTED").is_file()  # the branch point, kept
    report = json.loads((run / "stages/01-cooldown_mid/init_report.json").read_text())
    assert report["source"].endswith("00-stable/kept/step_0000002") and report["load"] == "weights+optimizer"
    evals = read_jsonl(run / "eval.jsonl")
    assert [(r["stage"], r["stage_step"], r["step"]) for r in evals] == [
        ("stable", 0, 0), ("stable", 2, 2), ("stable", 4, 4),
        ("cooldown_mid", 0, 2), ("cooldown_mid", 2, 4),
        ("cooldown", 0, 4), ("cooldown", 2, 6),
    ]  # fmt: skip
    assert (
        evals[3]["heldout/royal/loss"] == evals[1]["heldout/royal/loss"]
    )  # the branch starts where stable was
    stage = recipe.stages(run)[2]
    cooldown = read_metrics(run / "stages/02-cooldown")
    assert [r["lr"] for r in cooldown] == [lr_at(s, stage.run.optim, 2) for s in range(2)]
    merged = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in merged if "loss" in r and r["stage"] == "cooldown"] == [5, 6]
    summary = json.loads((run / "recipe_summary.json").read_text())
    royal = summary["domains"]["royal"]
    assert (
        royal["before"] == evals[0]["heldout/royal/loss"]
        and royal["after"] == evals[-1]["heldout/royal/loss"]
    )
    assert summary["stages"]["cooldown"]["global_steps"] == [4, 6]
    assert sorted(p.name for p in (run / "tb").iterdir()) == ["00-stable", "01-cooldown_mid", "02-cooldown"]
    assert main(["train", str(path), "--run-dir", str(run)]) == 2  # exists: --resume or --overwrite
    assert main(["train", str(path), "--run-dir", str(run), "--resume"]) == 0  # finished: nothing to redo
    assert read_jsonl(run / "eval.jsonl") == evals


def test_monitoring_does_not_change_the_training(tiny_recipe: Callable[..., Recipe], tmp_path: Path) -> None:
    watched = run_recipe(tiny_recipe("bitnet_transition", steps=3, every=1), tmp_path / "watched")
    plain_recipe = tiny_recipe("bitnet_transition", steps=3)
    plain_recipe = type(plain_recipe)(
        plain_recipe.config.model_copy(update={"monitor": None}), plain_recipe.base, "x"
    )
    run_recipe(plain_recipe, tmp_path / "plain")
    assert len(read_jsonl(tmp_path / "watched" / "eval.jsonl")) == 8  # steps 0-3 of both stages
    for stage in ("dense", "transition"):  # pieces of one step each resume bitwise
        assert losses(tmp_path / "watched", stage) == losses(tmp_path / "plain", stage)
    assert watched.summary is not None


def test_a_recipe_resumed_in_the_middle_of_stage_two_is_exact(
    tiny_recipe: Callable[..., Recipe], tmp_path: Path
) -> None:
    recipe = tiny_recipe("bitnet_transition", stage_steps={"dense": 2, "transition": 4}, every=2)
    stopped = tmp_path / "run"
    run_recipe(recipe, stopped)
    full = tmp_path / "full"
    shutil.copytree(stopped, full)  # the uninterrupted run, kept for comparison
    shutil.rmtree(stopped / "stages/01-transition/checkpoints/step_0000004")  # as if killed after step 2
    result = run_recipe(recipe, stopped, resume=True)
    assert result.stages_run == ["transition"]
    assert losses(stopped, "transition") == losses(full, "transition")
    strip = ("tokens_per_s",)
    assert [
        {k: v for k, v in r.items() if k not in strip} for r in read_metrics(stopped / "stages/01-transition")
    ] == [{k: v for k, v in r.items() if k not in strip} for r in read_metrics(full / "stages/01-transition")]
    assert read_jsonl(stopped / "eval.jsonl") == read_jsonl(full / "eval.jsonl")
    for name, tensor in final_tensors(full, "transition").items():
        assert torch.equal(tensor, final_tensors(stopped, "transition")[name]), name


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    parts = set()
    for name, tensor in after.items():
        if not torch.equal(tensor, before[name]):
            parts.add(name.split(".")[0])
    return parts


def test_stage_boundaries_switch_trainable_parts_and_the_mix_at_once(
    tiny_recipe: Callable[..., Recipe], tmp_path: Path
) -> None:
    changes: dict[str, Any] = {"stages": {"full": {"mix": {"demo": 0.5, "text": 0.5}}}}
    recipe = tiny_recipe("vlm_llava", **changes)
    run = tmp_path / "run"
    run_recipe(recipe, run)
    stages = recipe.stages(run)
    loaded, _ = load_stage_model(stages[0], None)  # the seeded fresh init of the first stage
    init = {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
    llm, align, full = (final_tensors(run, s) for s in ("llm", "align", "full"))
    assert _changed(init, llm) == {"llm"}  # text only: the tower and connector stay frozen
    assert _changed(llm, align) == {"connectors"}  # connector-only alignment
    assert "llm" in _changed(align, full) and "encoders" not in _changed(align, full)  # tower frozen
    assert stages[2].run.model.trainable == {"encoders": False}
    first = {s: read_metrics(run / f"stages/{i:02d}-{s}")[0] for i, s in enumerate(("llm", "align", "full"))}
    assert {k for k in first["llm"] if k.startswith("docs/")} == {"docs/text"}
    assert {k for k in first["align"] if k.startswith("docs/")} == {"docs/demo"}
    assert {k for k in first["full"] if k.startswith("docs/")} == {"docs/demo", "docs/text"}
    # the documents each stage's reader draws, from its first on: the stage's own mix
    from mmpretrain.data.mixing import MixedReader

    for stage, expected in zip(
        stages, ({"text": 1.0}, {"demo": 1.0}, {"demo": 0.5, "text": 0.5}), strict=True
    ):
        assert stage.run.data is not None and stage.run.data.shards is not None
        reader = MixedReader(stage.run.data.shards.mix, seed=stage.run.train.seed)
        draws = [reader.source_at(i) for i in range(400)]
        assert {name: draws.count(name) / 400 for name in expected} == pytest.approx(expected, abs=0.1)
        last = read_metrics(stage.run_dir)[-1]
        assert {k[5:] for k, v in last.items() if k.startswith("docs/") and v} <= set(expected)


def test_monitoring_scores_held_out_domains_and_few_shot_tasks(
    tiny_recipe: Callable[..., Recipe], demo_data: Path, tmp_path: Path
) -> None:
    probe = {"task": "shapes_classify", "set": [f"heldout={demo_data / 'heldout'}"]}
    recipe = tiny_recipe("vlm_llava", monitor={"tasks": [probe], "limit": 2})
    assert recipe.config.monitor is not None
    loaded, report = load_stage_model(recipe.stages(tmp_path)[0], None)  # the fresh init: no report
    record = evaluate(loaded, recipe.config.monitor)
    assert report is None and set(record) == {
        "heldout/royal/loss", "heldout/royal/ppl", "heldout/royal/tokens",
        "heldout/demo/loss", "heldout/demo/ppl", "heldout/demo/tokens",
        "eval/shapes_classify/0shot",
    }  # fmt: skip
    assert record["heldout/royal/ppl"] == pytest.approx(math.exp(record["heldout/royal/loss"]))
    assert record["heldout/demo/tokens"] > 0 and 0 <= record["eval/shapes_classify/0shot"] <= 1
