"""Fixtures of the export tests: a small tokenizer with our special tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from export_sentences import sentences

from mmpretrain.data.tokenizer import TextTokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300-entry BPE (+ our 8 special tokens) trained on generated sentences."""
    from mmpretrain.data.tokenizer import train_bpe

    out = tmp_path_factory.mktemp("tokenizer")
    train_bpe(sentences(800), vocab_size=300).save(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> TextTokenizer:
    from mmpretrain.data.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)
