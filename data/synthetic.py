"""Seeded synthetic document streams for benchmarks and tests (no data needed)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from mmpretrain.data.packing import PackedDocument


def lognormal_documents(
    vocab: int, seed: int, median: float = 300.0, sigma: float = 1.0
) -> Iterator[PackedDocument]:
    """An endless seeded stream of documents with lognormal lengths (median 300 tokens,
    sigma 1.0 by default) and uniform random token ids in ``[1, vocab)`` (0 stays free
    for padding)."""
    gen = torch.Generator().manual_seed(seed)
    index = 0
    while True:
        length = max(1, round(math.exp(math.log(median) + sigma * float(torch.randn((), generator=gen)))))
        tokens = torch.randint(1, vocab, (length,), generator=gen).tolist()
        yield PackedDocument(f"doc{index}", tokens)
        index += 1
