"""Fixtures for the reliability suite: text shards, a tokenizer, tiny run configs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import corpus_documents, tiny_run_config, write_text_shards, write_yaml


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
