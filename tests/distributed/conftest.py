"""Fixtures for the distributed tests: a small tokenizer and tiny configs based on
``configs/text/tiny.yaml`` (the Shakespeare corpus), shrunk to run in seconds."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .dist_helpers import tiny_config


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300-token BPE tokenizer trained on the first Shakespeare documents."""
    from mmpretrain.data.skips import SkipCounter
    from mmpretrain.data.text_sources import ShakespeareSource, iter_documents
    from mmpretrain.data.tokenizer import train_bpe

    documents = iter_documents(ShakespeareSource(split="train"), SkipCounter(max_skips=0, name="shakespeare"))
    out = tmp_path_factory.mktemp("tokenizer")
    train_bpe((d.text for d in itertools.islice(documents, 300)), vocab_size=300).save(out)
    return out


@pytest.fixture
def write_config(tmp_path: Path, tokenizer_dir: Path) -> Callable[..., Path]:
    """Factory: write a tiny config (sections override the defaults), return its path."""

    def write(name: str = "run.yaml", **sections: dict[str, Any]) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(tiny_config(tokenizer_dir, **sections)), encoding="utf-8")
        return path

    return write
