"""Fixtures for training tests: a generated corpus, a small tokenizer, tiny run configs."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

WORDS = [
    "the",
    "king",
    "queen",
    "speaks",
    "of",
    "night",
    "and",
    "day",
    "love",
    "war",
    "crown",
    "sword",
    "fool",
    "heart",
    "storm",
    "sea",
    "ship",
    "castle",
    "forest",
    "letter",
    "ring",
    "gold",
    "silver",
    "moon",
    "sun",
    "star",
    "wind",
    "rain",
    "fire",
    "earth",
    "water",
    "honour",
]


def make_corpus(path: Path, documents: int = 300, seed: int = 0) -> Path:
    """Paragraph-separated documents of random sentences (deterministic)."""
    rng = random.Random(seed)
    paragraphs = []
    for _ in range(documents):
        sentences = [
            " ".join(rng.choices(WORDS, k=rng.randint(4, 14))).capitalize() + "."
            for _ in range(rng.randint(1, 12))
        ]
        paragraphs.append(" ".join(sentences))
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> Path:
    from mmpretrain.data.tokenizer import train_bpe

    texts = corpus_file.read_text(encoding="utf-8").split("\n\n")
    out = tmp_path_factory.mktemp("tokenizer")
    train_bpe(texts, vocab_size=300).save(out)
    return out


def tiny_run_config(corpus: Path, tokenizer: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A run config that steps in a few milliseconds."""
    config: dict[str, Any] = {
        "model": {
            "llm": {
                "name": "llama",
                "vocab_size": 320,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_layers": 2,
                "num_heads": 4,
                "num_kv_heads": 2,
                "max_position_embeddings": 128,
            }
        },
        "data": {
            "sources": [{"format": "text", "paths": [str(corpus)], "split": "paragraphs", "min_chars": 1}],
            "tokenizer": {"name": "bpe", "path": str(tokenizer)},
            "buffer_docs": 64,
        },
        "train": {
            "max_steps": 12,
            "batch_size": 4,
            "seq_len": 64,
            "log_every": 1,
            "save_every": 4,
            "seed": 0,
        },
        "optim": {"lr": 3e-3, "warmup_steps": 2},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config


@pytest.fixture
def write_config(tmp_path: Path, corpus_file: Path, tokenizer_dir: Path) -> Callable[..., Path]:
    """Factory: write a tiny run config (sections override the defaults) and return its path."""

    def write(name: str = "run.yaml", **sections: dict[str, Any]) -> Path:
        path = tmp_path / name
        path.write_text(
            yaml.safe_dump(tiny_run_config(corpus_file, tokenizer_dir, **sections)), encoding="utf-8"
        )
        return path

    return write
