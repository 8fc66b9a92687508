"""Helpers of the distributed tests: tiny configs based on ``configs/text/tiny.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "text" / "tiny.yaml"


def tiny_config(tokenizer: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """``configs/text/tiny.yaml`` with a 2-layer, 32-wide Llama, 64-token rows and the
    given section overrides (merged key by key)."""
    config: dict[str, Any] = {
        "base": str(TINY),
        "model": {
            "llm": {
                "vocab_size": 320,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_layers": 2,
                "num_heads": 4,
                "num_kv_heads": 2,
                "max_position_embeddings": 128,
            }
        },
        "data": {"tokenizer": {"name": "bpe", "path": str(tokenizer)}, "buffer_docs": 16},
        "train": {
            "max_steps": 10,
            "batch_size": 2,
            "seq_len": 64,
            "log_every": 1,
            "save_every": 5,
            "precision": "fp32",
        },
        "optim": {"lr": 3e-3, "warmup_steps": 2},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config
