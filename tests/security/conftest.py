"""Fixtures for the security suite: text shards, a tokenizer and a tiny trained run to plant
things in (the payloads are in hostile_inputs.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# the reliability suite's helpers (tiny configs over text shards, in-process CLI runs)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))

from reliability_helpers import (
    corpus_documents,
    run_quietly,
    tiny_run_config,
    train_argv,
    write_text_shards,
    write_yaml,
)


@pytest.fixture(scope="session")
def shards_and_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from mmpretrain.data.tokenizer import train_bpe

    shards = tmp_path_factory.mktemp("shards")
    write_text_shards(shards, corpus_documents(), per_shard=6)
    tokenizer = tmp_path_factory.mktemp("tokenizer")
    train_bpe(corpus_documents(), vocab_size=300).save(tokenizer)
    return shards, tokenizer


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, shards_and_tokenizer: tuple[Path, Path]) -> Path:
    """A run stopped at step 4 of 6 (checkpoints at steps 2 and 4); copy it before changing it."""
    shards, tokenizer = shards_and_tokenizer
    root = tmp_path_factory.mktemp("trained")
    config = write_yaml(
        root / "run.yaml", tiny_run_config(shards, tokenizer, train={"max_steps": 6, "save_every": 2})
    )
    code, output = run_quietly(train_argv(config, root / "run", "--set", "train.stop_after_steps=4"))
    assert code == 0, output
    return root / "run"
