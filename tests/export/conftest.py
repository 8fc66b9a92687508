"""Fixtures of the export tests: a small tokenizer with our special tokens."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from mmpretrain.data.tokenizer import TextTokenizer

WORDS = [
    "the",
    "a",
    "red",
    "blue",
    "green",
    "circle",
    "square",
    "triangle",
    "small",
    "large",
    "shape",
    "picture",
    "sound",
    "tone",
    "high",
    "low",
    "is",
]


def sentences(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(4, 16))) + "." for _ in range(count)]


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
