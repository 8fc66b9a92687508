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
from dataclasses import dataclass, field

import torch

from mmpretrain.data.types import IGNORE_INDEX, PackedBatch


def best_fit_pack(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
    """Pack items of the given lengths into bins of capacity ``seq_len``.

    Best-fit decreasing: items are placed longest first, each into the open bin whose
    free space is the smallest that still fits it (ties: the most recently filled bin),
    or into a new bin. Free spaces are kept as a sorted list of distinct values with a
    stack of bins per value, so a placement is a binary search: O(n log L) overall.

    Returns the indices of the items in each bin, bins in creation order; every index
    appears exactly once and no bin exceeds ``seq_len``. Every length must lie in
    ``[0, seq_len]`` (split longer documents first: :func:`split_tokens`).
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    if order and not (lengths[order[-1]] >= 0 and lengths[order[0]] <= seq_len):
        bad = next(i for i in order if not 0 <= lengths[i] <= seq_len)
        raise ValueError(f"item {bad} has length {lengths[bad]}, outside [0, {seq_len}]")
    bins: list[list[int]] = []
    free_values: list[int] = []  # sorted distinct free spaces of open bins
    bins_by_free: dict[int, list[int]] = {}
    for index in order:
        length = lengths[index]
        position = bisect.bisect_left(free_values, length)
        if position == len(free_values):
            bin_id = len(bins)
            bins.append([index])
            free = seq_len - length
        else:
            old_free = free_values[position]
            stack = bins_by_free[old_free]
            bin_id = stack.pop()
            if not stack:
                del bins_by_free[old_free]
                del free_values[position]
            bins[bin_id].append(index)
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


@dataclass
class TextPacker:
    """Streaming best-fit packer: buffers ``buffer_docs`` documents, packs them with
    :func:`best_fit_pack` and emits the packs in a seeded shuffled order.

    Documents longer than ``seq_len`` are split into pieces first. Each emitted pack
    comes with the :class:`PackerState` to resume after it.
    """

    seq_len: int
    buffer_docs: int = 2048
    seed: int = 0
    _pieces: list[PackedDocument] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.seq_len <= 0 or self.buffer_docs <= 0:
            raise ValueError("seq_len and buffer_docs must be positive")

    def pack(
        self, documents: Iterable[PackedDocument], state: PackerState | None = None
    ) -> Iterator[tuple[list[PackedDocument], PackerState]]:
        """Yield ``(pack, state_after_pack)``. ``documents`` must start at
        ``state.round_start`` of the stream the state was taken from."""
        state = state or PackerState()
        round_start, skip = state.round_start, state.emitted
        buffer: list[PackedDocument] = []
        consumed = 0
        for document in documents:
            buffer.append(document)
            consumed += 1
            if consumed == self.buffer_docs:
                yield from self._emit_round(buffer, round_start, skip, round_start + consumed)
                round_start, skip, buffer, consumed = round_start + consumed, 0, [], 0
        if buffer:
            yield from self._emit_round(buffer, round_start, skip, round_start + consumed)

    def _emit_round(
        self, buffer: list[PackedDocument], round_start: int, skip: int, next_round: int
    ) -> Iterator[tuple[list[PackedDocument], PackerState]]:
        pieces = [piece for doc in buffer for piece in split_document(doc, self.seq_len)]
        packs = [
            [pieces[i] for i in bin_] for bin_ in best_fit_pack([len(p.tokens) for p in pieces], self.seq_len)
        ]
        # Best-fit creates bins longest-document first; shuffle so batches mix lengths.
        random.Random(self.seed * 1_000_003 + round_start).shuffle(packs)
        for number, pack in enumerate(packs[skip:], start=skip + 1):
            done = number == len(packs)
            yield pack, PackerState(next_round, 0) if done else PackerState(round_start, number)


def build_text_batch(packs: Sequence[Sequence[PackedDocument]], seq_len: int, pad_id: int) -> PackedBatch:
    """Lay packs out as a ``[len(packs), seq_len]`` :class:`PackedBatch`.

    Each document restarts its position ids at 0, gets its own doc id, and has label
    -100 at its first position (transformers shifts labels inside the model, so this
    stops the previous document from predicting it); padding gets doc id -1, label
    -100 and the pad token.
    """
    rows = len(packs)
    input_ids = torch.full((rows, seq_len), pad_id, dtype=torch.long)
    labels = torch.full((rows, seq_len), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((rows, seq_len), dtype=torch.long)
    doc_ids = torch.full((rows, seq_len), -1, dtype=torch.long)
    keys: list[list[str]] = []
    for row, pack in enumerate(packs):
        offset = 0
        for doc_id, document in enumerate(pack):
            length = len(document.tokens)
            if offset + length > seq_len:
                raise ValueError(f"pack {row} holds {offset + length} tokens, more than seq_len {seq_len}")
            tokens = torch.tensor(document.tokens, dtype=torch.long)
            span = slice(offset, offset + length)
            input_ids[row, span] = tokens
            labels[row, span] = tokens
            labels[row, offset] = IGNORE_INDEX
            position_ids[row, span] = torch.arange(length)
            doc_ids[row, span] = doc_id
            offset += length
        keys.append([document.key for document in pack])
    return PackedBatch(input_ids, labels, position_ids, doc_ids, keys=keys)


def text_efficiency(packs: Sequence[Sequence[int]], lengths: Sequence[int], seq_len: int) -> float:
    """Fraction of the ``len(packs) x seq_len`` token slots that hold document tokens."""
    if not packs:
        return 1.0
    return sum(lengths[i] for pack in packs for i in pack) / (len(packs) * seq_len)
