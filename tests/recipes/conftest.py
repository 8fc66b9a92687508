"""Fixtures for recipe tests: two tiny text domains, their text shards, a small tokenizer,
demo shards, a finished tiny text run, and the tiny variant of every shipped recipe
(fixture data, a 2-layer model of width 32, a few steps per stage)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from recipe_helpers import (
    LEGAL,
    ROYAL,
    TINY_LLM,
    _shrink_readers,
    _walk,
    make_corpus,
    text_domain,
    text_run_data,
    text_shards,
)

from mmpretrain.config import load_yaml_with_bases, resolve_config_path
from mmpretrain.recipes.config import Recipe, recipe_from_data


@pytest.fixture(scope="session")
def domains(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two text domains (training and held-out files, text shards) and a tokenizer."""
    from mmpretrain.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("domains")
    paths: dict[str, Path] = {}
    for name, words, seed in (("royal", ROYAL, 0), ("legal", LEGAL, 1)):
        paths[name] = make_corpus(root / f"{name}.txt", words, 120, seed)
        paths[f"{name}_heldout"] = make_corpus(root / f"{name}_heldout.txt", words, 12, seed + 100)
        paths[f"{name}_shards"] = text_shards(paths[name], root / f"{name}-shards")
    texts = [p.read_text(encoding="utf-8") for p in (paths["royal"], paths["legal"])]
    paths["tokenizer"] = root / "tokenizer"
    train_bpe("\n\n".join(texts).split("\n\n"), vocab_size=300).save(paths["tokenizer"])
    return paths


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo shards with pictures and text (no speech: fast), with heldout/."""
    from mmpretrain.data.demo_data import build_demo_dataset

    out = tmp_path_factory.mktemp("demo")
    kinds = {"caption": 0.4, "interleaved": 0.2, "vqa": 0.2, "text": 0.2}
    build_demo_dataset(out, samples=40, shards=2, seed=0, kinds_mix=kinds, progress=False)
    return out


@pytest.fixture
def tiny_recipe(domains: dict[str, Path], demo_data: Path, tmp_path: Path) -> Callable[..., Recipe]:
    """Factory: the tiny variant of a shipped recipe (``steps`` per stage unless given in
    ``stage_steps``; fixture data in place of the ``runs/...`` paths; held-out domains on
    the fixture corpora; ``changes`` deep-merged last)."""
    from mmpretrain.config import deep_merge

    def make(
        name: str,
        steps: int = 2,
        stage_steps: dict[str, int] | None = None,
        every: int | None = None,
        paths: dict[str, str] | None = None,
        **changes: Any,
    ) -> Recipe:
        data = load_yaml_with_bases(resolve_config_path(f"recipes/{name}"))
        replace = {
            "runs/demo-data": str(demo_data),
            "runs/shakespeare-text": str(domains["royal_shards"]),
            "runs/domain-text": str(domains["legal_shards"]),
            **(paths or {}),
        }
        data = _shrink_readers(_walk(data, replace))
        data["model"]["llm"] = {**data["model"]["llm"], **TINY_LLM}
        data["data"]["tokenizer"] = {"name": "bpe", "path": str(domains["tokenizer"])}
        if data["data"].get("sources"):
            data["data"]["sources"] = text_domain(domains["royal"])["sources"]
            data["data"]["buffer_docs"] = 32
        multimodal = bool(data["model"].get("encoders"))
        data["train"] = {
            **data["train"],
            "batch_size": 2,
            "seq_len": 128 if multimodal else 64,
            "log_every": 1,
            "save_every": 100,
            "precision": "fp32",
        }
        for stage_name, stage in data["stages"].items():
            stage["steps"] = (stage_steps or {}).get(stage_name, steps)
        for stage in data["stages"].values():
            if stage.get("init", {}).get("step"):  # a branch: from the middle of its source stage
                stage["init"]["step"] = max(1, data["stages"][stage["init"]["source"]]["steps"] // 2)
            optim = stage.setdefault("optim", {})
            for key in ("warmup_steps", "decay_steps"):
                if optim.get(key):
                    optim[key] = 1
            for rule in stage.get("model", {}).get("kernels", []):
                rule["transition_steps"] = max(1, stage["steps"] // 2)
        if data["optim"].get("warmup_steps"):
            data["optim"]["warmup_steps"] = 1
        monitor = data.get("monitor")
        if monitor is not None:
            monitor["every"] = every or max(s["steps"] for s in data["stages"].values())
            monitor["max_batches"] = 1
            monitor.pop("tasks", None)
            monitor["domains"] = {
                "royal": text_domain(domains["royal_heldout"]),
                **{k: v for k, v in monitor["domains"].items() if "shards" in v},
            }
        data = deep_merge(data, changes)
        return recipe_from_data(data, f"tiny {name}")

    return make


@pytest.fixture(scope="session")
def text_run(domains: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step text run (checkpoints at steps 2 and 4)."""
    from mmpretrain.config import validate_config
    from mmpretrain.run_config import RunConfig
    from mmpretrain.train.loop import train

    run_dir = tmp_path_factory.mktemp("text-run") / "run"
    train(validate_config(RunConfig, text_run_data(domains), "text run"), run_dir)
    return run_dir
