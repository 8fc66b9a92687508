"""Helpers of the recipe tests (import as `recipe_helpers`): two tiny text domains, text
shards, tiny run configs and the changes that make a shipped recipe tiny."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

ROYAL = "the king queen speaks of night and day love war crown sword fool heart storm sea ship castle"
LEGAL = "the party shall license grant copy work notice terms law court right use any such means agree"

TINY_LLM = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "vocab_size": 320,
    "max_position_embeddings": 256,
}


def make_corpus(path: Path, vocabulary: str, documents: int, seed: int) -> Path:
    """Paragraph-separated documents of random sentences over ``vocabulary``'s words
    (deterministic)."""
    rng = random.Random(seed)
    words = vocabulary.split(" ")
    paragraphs = []
    for _ in range(documents):
        sentences = [
            " ".join(rng.choices(words, k=rng.randint(4, 12))).capitalize() + "."
            for _ in range(rng.randint(2, 8))
        ]
        paragraphs.append(" ".join(sentences))
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return path


def text_shards(corpus: Path, out: Path) -> Path:
    """``mmpt data build --format text`` of ``corpus`` into ``out``."""
    from mmpretrain.data.build.options import BuildOptions
    from mmpretrain.data.build.runner import build_dataset

    build_dataset("text", BuildOptions(input=corpus, out=out), progress=False)
    return out


def text_domain(path: Path) -> dict[str, Any]:
    """A held-out text domain (monitor.domains entry) reading ``path``."""
    return {"sources": [{"format": "text", "paths": [str(path)], "split": "paragraphs", "min_chars": 1}]}


def _walk(node: Any, replace: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _walk(v, replace) for k, v in node.items()}
    if isinstance(node, list):
        return [_walk(v, replace) for v in node]
    if isinstance(node, str):
        for old, new in replace.items():
            if node == old or node.startswith(old + "/"):
                return new + node[len(old) :]
    return node


def _shrink_readers(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _shrink_readers(v) for k, v in node.items()}
        if "shards" in out and isinstance(out["shards"], list):
            out["shuffle_buffer"] = min(int(out.get("shuffle_buffer", 16)), 16)
        if "buffer_docs" in out:
            out["buffer_docs"] = min(int(out["buffer_docs"]), 32)
        return out
    if isinstance(node, list):
        return [_shrink_readers(v) for v in node]
    return node


def text_run_data(domains: dict[str, Path], **sections: dict[str, Any]) -> dict[str, Any]:
    """A tiny text run config (royal corpus, fixture tokenizer); sections override."""
    data: dict[str, Any] = {
        "model": {"llm": {"name": "llama", **TINY_LLM}},
        "data": {
            **text_domain(domains["royal"]),
            "tokenizer": {"name": "bpe", "path": str(domains["tokenizer"])},
            "buffer_docs": 32,
        },
        "train": {"max_steps": 4, "batch_size": 2, "seq_len": 64, "log_every": 1, "save_every": 2},
        "optim": {"lr": 3e-3, "warmup_steps": 1},
    }
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return data
