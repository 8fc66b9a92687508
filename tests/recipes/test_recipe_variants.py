"""The tiny variant of every shipped recipe runs end to end: every stage reaches its final
checkpoint, the held-out domains are evaluated at each stage's start and end, and the
summary is written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from recipe_helpers import make_corpus

from mmpretrain.config import shipped_config_names
from mmpretrain.recipes.config import Recipe
from mmpretrain.recipes.monitor import read_jsonl
from mmpretrain.recipes.runner import run_recipe

# demo: it reads the data `mmpt demo` builds; tests/test_demo.py runs it end to end
# (`mmpt demo --quick`) in every default test run
RECIPES = [n.removeprefix("recipes/") for n in shipped_config_names() if n.startswith("recipes/")]
SHIPPED = sorted(n for n in RECIPES if n != "demo")
# speech_lm: espeak-ng synthesis for its fixture shards; wsd_cooldown and vlm_llava also run
# (tiny) in every default test run, in test_recipe_runner.py
SLOW = {"speech_lm", "wsd_cooldown", "vlm_llava"}


def check_finished(recipe: Recipe, run: Path) -> None:
    stages = recipe.stages(run)
    for stage in stages:
        assert (stage.run_dir / "checkpoints" / f"step_{stage.config.steps:07d}" / "COMMITTED").is_file()
        assert (stage.run_dir / "init_report.json").is_file()
    evals = {(r["stage"], r["stage_step"]) for r in read_jsonl(run / "eval.jsonl")}
    assert evals >= {(s.name, 0) for s in stages} | {(s.name, s.config.steps) for s in stages}
    summary = json.loads((run / "recipe_summary.json").read_text())
    assert all(d["before"] is not None and d["after"] is not None for d in summary["domains"].values())
    assert list(summary["stages"]) == [s.name for s in stages]


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in SHIPPED]
)
def test_tiny_variant_runs(
    name: str,
    tiny_recipe: Callable[..., Recipe],
    text_run: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    paths = {"runs/tiny": str(text_run)}
    if name == "speech_lm":
        paths.update(request.getfixturevalue("speech_data"))
    recipe = tiny_recipe(name, paths=paths)
    run = tmp_path / "run"
    run_recipe(recipe, run)
    check_finished(recipe, run)


@pytest.fixture(scope="session")
def speech_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Synthetic interleaved speech-text shards of a few short documents, and spoken demo
    sentences as ASR pairs."""
    from mmpretrain.data.build.options import BuildOptions
    from mmpretrain.data.build.runner import build_dataset
    from mmpretrain.data.demo_data import build_demo_dataset

    root = tmp_path_factory.mktemp("speech")
    corpus = make_corpus(root / "short.txt", "the king speaks of night and day", 4, 3)
    build_dataset("tts-interleaved", BuildOptions(input=corpus, out=root / "tts"), progress=False)
    kinds = {"spoken_sentence": 0.5, "speech_caption": 0.5}
    build_demo_dataset(root / "asr", samples=16, shards=2, seed=0, kinds_mix=kinds, progress=False)
    return {"runs/tts-interleaved": str(root / "tts"), "runs/demo-data": str(root / "asr")}
