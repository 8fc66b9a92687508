"""Baselines that packing is measured against: other bin-packing heuristics and the
padding collators (one document per row) that most research repos use."""

from __future__ import annotations

from collections.abc import Sequence

from mmpretrain.data.packing import PackedDocument, build_text_batch, split_tokens
from mmpretrain.data.types import PackedBatch


def next_fit_pack(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
    """Greedy in stream order: append to the current bin, open a new one when full."""
    bins: list[list[int]] = []
    free = 0
    for index, length in enumerate(lengths):
        if not 0 <= length <= seq_len:
            raise ValueError(f"item {index} has length {length}, outside [0, {seq_len}]")
        if not bins or length > free:
            bins.append([])
            free = seq_len
        bins[-1].append(index)
        free -= length
    return bins


def first_fit_decreasing_pack(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
    """Longest first, each item into the lowest-numbered bin that fits (a max segment
    tree over free space finds it in O(log n))."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    size = 1
    while size < max(len(lengths), 1):
        size *= 2
    tree = [0] * (2 * size)  # max free space per subtree; leaves = bins (unopened: 0)
    bins: list[list[int]] = []
    for index in order:
        length = lengths[index]
        if not 0 <= length <= seq_len:
            raise ValueError(f"item {index} has length {length}, outside [0, {seq_len}]")
        if tree[1] >= length and bins:
            node = 1
            while node < size:
                node = 2 * node if tree[2 * node] >= length else 2 * node + 1
            bin_id = node - size
        else:
            bin_id = len(bins)
            bins.append([])
            node = size + bin_id
            tree[node] = seq_len
        bins[bin_id].append(index)
        tree[node] -= length
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return bins


def pad_to_length_batch(documents: Sequence[PackedDocument], seq_len: int, pad_id: int) -> PackedBatch:
    """One document per row, padded to ``seq_len`` (longer documents: first piece only,
    as truncating collators do)."""
    rows = [[PackedDocument(d.key, split_tokens(d.tokens, seq_len)[0])] for d in documents]
    return build_text_batch(rows, seq_len, pad_id)


def dynamic_padding_batch(documents: Sequence[PackedDocument], pad_id: int, max_len: int) -> PackedBatch:
    """One document per row, padded to the longest document of the batch (at most
    ``max_len``; longer documents: first piece only)."""
    pieces = [PackedDocument(d.key, split_tokens(d.tokens, max_len)[0]) for d in documents]
    longest = max((len(p.tokens) for p in pieces), default=1)
    return build_text_batch([[p] for p in pieces], longest, pad_id)
