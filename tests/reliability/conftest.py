"""Fixtures for the reliability suite: text shards, a tokenizer, tiny run configs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import (
    corpus_documents,
    losses,
    run_quietly,
    tiny_run_config,
    train_argv,
    write_text_shards,
    write_yaml,
)


@pytest.fixture(scope="session")
def text_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 documents in 40 text-only shards: a tiny run switches shards every few steps."""
    out = tmp_path_factory.mktemp("shards")
    write_text_shards(out, corpus_documents(), per_shard=6)
    return out


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmpretrain.data.tokenizer import train_bpe

    out = tmp_path_factory.mktemp("tokenizer")
    train_bpe(corpus_documents(), vocab_size=300).save(out)
    return out


@pytest.fixture
def write_config(tmp_path: Path, text_shards: Path, tokenizer_dir: Path) -> Callable[..., Path]:
    """Factory: write a tiny run config (sections override the defaults), return its path."""

    def write(name: str = "run.yaml", **sections: dict[str, Any]) -> Path:
        return write_yaml(tmp_path / name, tiny_run_config(text_shards, tokenizer_dir, **sections))

    return write


@pytest.fixture(scope="session")
def reference_run(
    tmp_path_factory: pytest.TempPathFactory, text_shards: Path, tokenizer_dir: Path
) -> Callable[..., tuple[Path, list[float]]]:
    """Factory: the config and losses of an uninterrupted run with these ``train`` settings
    (run once per test process; runs resumed against it use copies of the config)."""
    cache: dict[str, tuple[Path, list[float]]] = {}

    def reference(**train: Any) -> tuple[Path, list[float]]:
        key = json.dumps(train, sort_keys=True)
        if key not in cache:
            root = tmp_path_factory.mktemp("reference")
            config = write_yaml(root / "run.yaml", tiny_run_config(text_shards, tokenizer_dir, train=train))
            code, output = run_quietly(train_argv(config, root / "uninterrupted"))
            assert code == 0, output
            cache[key] = (config, losses(root / "uninterrupted"))
        return cache[key]

    return reference
