"""Generated sentences for the export tests (a module of its own: `conftest` is not
importable by name when several test folders are collected together)."""

from __future__ import annotations

import random

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
