"""Best-fit-decreasing sequence packing (Fewer Truncations) for text documents.

``best_fit_pack`` is the pure core that benchmarks and tests call directly. The
streaming :class:`TextPacker` around it packs a buffer of documents at a time
(deterministically, so a resumed run re-creates the same packs) and
:func:`build_text_batch` lays packs out as a :class:`PackedBatch`.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from mmpretrain.data.types import PackedBatch


@dataclass(frozen=True)
class PackLimit:
    """A second capacity of every pack besides its length: ``amounts[i]`` of item ``i``
    must sum to at most ``capacity`` per pack (e.g. images per pack, audio seconds)."""

    amounts: Sequence[float]
    capacity: float


def best_fit_pack(lengths: Sequence[int], seq_len: int, limits: Sequence[PackLimit] = ()) -> list[list[int]]:
    """Pack items of the given lengths into bins of capacity ``seq_len``.

    Best-fit decreasing: items are placed longest first, each into the open bin whose
    free space is the smallest that still fits it (ties: the most recently filled bin),
    or into a new bin. Free spaces are kept as a sorted list of distinct values with a
    stack of bins per value, so a placement is a binary search: O(n log L) overall.
    With ``limits`` a bin must also have room for the item's amounts; the search then
    moves on to the next-tightest bins (rarely more than a few steps).

    Returns the indices of the items in each bin, bins in creation order; every index
    appears exactly once and no bin exceeds ``seq_len`` or a limit. Every length must lie
    in ``[0, seq_len]`` (split longer documents first: :func:`split_tokens`) and every
    amount within its limit's capacity.
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    if order and not (lengths[order[-1]] >= 0 and lengths[order[0]] <= seq_len):
        bad = next(i for i in order if not 0 <= lengths[i] <= seq_len)
        raise ValueError(f"item {bad} has length {lengths[bad]}, outside [0, {seq_len}]")
    for limit in limits:
        if len(limit.amounts) != len(lengths) or any(a > limit.capacity for a in limit.amounts):
            raise ValueError(f"a limit needs one amount per item, each at most its capacity {limit.capacity}")
    bins: list[list[int]] = []
    used: list[list[float]] = []  # per bin, the amount used of each limit
    free_values: list[int] = []  # sorted distinct free spaces of open bins
    bins_by_free: dict[int, list[int]] = {}

    def within_limits(bin_id: int, index: int) -> bool:
        return all(used[bin_id][k] + limit.amounts[index] <= limit.capacity for k, limit in enumerate(limits))

    for index in order:
        length = lengths[index]
        bin_id, old_free = -1, -1
        position = bisect.bisect_left(free_values, length)
        if not limits:  # fast path: the tightest bin always fits
            if position < len(free_values):
                old_free = free_values[position]
                bin_id = bins_by_free[old_free].pop()
        else:
            while position < len(free_values) and bin_id < 0:
                stack = bins_by_free[free_values[position]]
                candidate = next((b for b in reversed(stack) if within_limits(b, index)), None)
                if candidate is None:
                    position += 1
                    continue
                bin_id, old_free = candidate, free_values[position]
                stack.remove(candidate)
        if bin_id >= 0 and not bins_by_free[old_free]:
            del bins_by_free[old_free]
            del free_values[position]
        if bin_id < 0:
            bin_id, old_free = len(bins), seq_len
            bins.append([])
            used.append([0.0] * len(limits))
        bins[bin_id].append(index)
        for k, limit in enumerate(limits):
            used[bin_id][k] += limit.amounts[index]
        free = old_free - length
        same_free = bins_by_free.get(free)  # full bins stay too: empty items still fit them
        if same_free is None:
            bins_by_free[free] = [bin_id]
            bisect.insort(free_values, free)
        else:
            same_free.append(bin_id)
    return bins


def split_tokens(tokens: Sequence[int], seq_len: int) -> list[list[int]]:
    """Split a document longer than ``seq_len`` into consecutive pieces of at most
    ``seq_len`` tokens (each piece becomes its own document; nothing is dropped)."""
    return [list(tokens[start : start + seq_len]) for start in range(0, max(len(tokens), 1), seq_len)]


@dataclass(frozen=True)
class PackedDocument:
    """A document (or a piece of a split one) placed in a pack."""

    key: str
    tokens: list[int]


def split_document(document: PackedDocument, seq_len: int) -> list[PackedDocument]:
    """:func:`split_tokens` for a document; pieces of a split one get keys ``KEY#i``."""
    if len(document.tokens) <= seq_len:
        return [document]
    return [
        PackedDocument(f"{document.key}#{i}", p) for i, p in enumerate(split_tokens(document.tokens, seq_len))
    ]


@dataclass(frozen=True)
class PackerState:
    """Where a :class:`TextPacker` stands: resuming from it re-reads documents from
    ``round_start`` (a document index of the input stream), re-packs that round
    deterministically and skips the ``emitted`` packs already handed out."""

    round_start: int = 0
    emitted: int = 0

    def as_dict(self) -> dict[str, int]:
        """JSON-ready form for checkpoints."""
        return {"round_start": self.round_start, "emitted": self.emitted}


DocumentT = TypeVar("DocumentT")


@dataclass
class RoundPacker(Generic[DocumentT]):
    """Streaming packer: buffers ``buffer_docs`` documents, packs the round with
    :meth:`pack_round` and emits the packs in a seeded shuffled order (best-fit makes
    bins longest-document first; shuffling mixes lengths across batches).

    Each emitted pack comes with the :class:`PackerState` to resume after it: the
    packing is deterministic, so a resumed run re-reads the round and skips what was
    already emitted.
    """

    seq_len: int
    buffer_docs: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        if self.seq_len <= 0 or self.buffer_docs <= 0:
            raise ValueError("seq_len and buffer_docs must be positive")

    def pack_round(self, buffer: list[DocumentT]) -> list[list[DocumentT]]:
        """Split and pack one round of documents (subclasses)."""
        raise NotImplementedError

    def pack(
        self, documents: Iterable[DocumentT], state: PackerState | None = None
    ) -> Iterator[tuple[list[DocumentT], PackerState]]:
        """Yield ``(pack, state_after_pack)``. ``documents`` must start at
        ``state.round_start`` of the stream the state was taken from."""
        state = state or PackerState()
        round_start, skip = state.round_start, state.emitted
        buffer: list[DocumentT] = []
        for document in documents:
            buffer.append(document)
            if len(buffer) == self.buffer_docs:
                yield from self._emit_round(buffer, round_start, skip)
                round_start, skip, buffer = round_start + len(buffer), 0, []
        if buffer:
            yield from self._emit_round(buffer, round_start, skip)

    def _emit_round(
        self, buffer: list[DocumentT], round_start: int, skip: int
    ) -> Iterator[tuple[list[DocumentT], PackerState]]:
        packs = self.pack_round(buffer)
        random.Random(self.seed * 1_000_003 + round_start).shuffle(packs)
        next_round = round_start + len(buffer)
        for number, pack in enumerate(packs[skip:], start=skip + 1):
            yield (
                pack,
                PackerState(next_round, 0) if number == len(packs) else PackerState(round_start, number),
            )


@dataclass
class TextPacker(RoundPacker[PackedDocument]):
    """Round packer for text: documents longer than ``seq_len`` are split into pieces,
    then :func:`best_fit_pack`."""

    def pack_round(self, buffer: list[PackedDocument]) -> list[list[PackedDocument]]:
        """Split long documents and best-fit pack the round."""
        pieces = [piece for doc in buffer for piece in split_document(doc, self.seq_len)]
        bins = best_fit_pack([len(p.tokens) for p in pieces], self.seq_len)
        return [[pieces[i] for i in bin_] for bin_ in bins]


def build_text_batch(packs: Sequence[Sequence[PackedDocument]], seq_len: int, pad_id: int) -> PackedBatch:
    """Lay packs out as a ``[len(packs), seq_len]`` :class:`PackedBatch`.

    Each document restarts its position ids at 0, gets its own doc id, and has label
    -100 at its first position (transformers shifts labels inside the model, so this
    stops the previous document from predicting it); padding gets doc id -1, label
    -100 and the pad token. (Text-only case of :func:`~mmpretrain.data.layout.layout_batch`.)
    """
    from mmpretrain.data.layout import MediaDocument, layout_batch

    documents = [[MediaDocument(d.key, [d.tokens]) for d in pack] for pack in packs]
    return layout_batch(documents, seq_len, pad_id)


def text_efficiency(packs: Sequence[Sequence[int]], lengths: Sequence[int], seq_len: int) -> float:
    """Fraction of the ``len(packs) x seq_len`` token slots that hold document tokens."""
    if not packs:
        return 1.0
    return sum(lengths[i] for pack in packs for i in pack) / (len(packs) * seq_len)
