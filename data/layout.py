"""Lay packed documents out as a PackedBatch: tokens, labels, positions, media spans.

A document is a list of parts: text token runs and media items. A media item takes
``<begin> + num_tokens x <placeholder> + <end>`` positions. Text-only documents are the
same thing with text parts only, so text and multimodal batches share this code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmpretrain.data.types import IGNORE_INDEX, MediaBatch, PackedBatch
from mmpretrain.errors import DataFormatError


@dataclass(frozen=True)
class MediaTokenIds:
    """Token ids of each modality's placeholder and begin/end markers."""

    placeholder: dict[str, int]
    begin: dict[str, int]
    end: dict[str, int]

    @classmethod
    def from_tokenizer(cls, tokenizer: object) -> MediaTokenIds:
        """The ids of a :class:`~mmpretrain.data.tokenizer.TextTokenizer`'s media tokens."""
        t: object = tokenizer
        return cls(
            placeholder={"image": t.image_id, "audio": t.audio_id},  # type: ignore[attr-defined]
            begin={"image": t.image_start_id, "audio": t.audio_start_id},  # type: ignore[attr-defined]
            end={"image": t.image_end_id, "audio": t.audio_end_id},  # type: ignore[attr-defined]
        )


@dataclass(frozen=True)
class MediaItem:
    """One preprocessed media item and the number of LLM positions it takes."""

    modality: str
    num_tokens: int
    inputs: torch.Tensor
    seconds: float = 0.0  # audio duration, for the per-pack audio budget

    @property
    def length(self) -> int:
        """Positions in the token stream, begin and end markers included."""
        return self.num_tokens + 2


class NoLossTokens(list[int]):
    """Text tokens the model reads but is not trained to predict (a prompt, a user turn)."""


Part = list[int] | MediaItem


@dataclass(frozen=True)
class MediaDocument:
    """A tokenized document: text token runs and media items, in order; ``source`` is the
    name of the mix source it was drawn from ("" when the data is not mixed)."""

    key: str
    parts: list[Part]
    source: str = ""

    @property
    def length(self) -> int:
        """Token positions of the whole document."""
        return sum(p.length if isinstance(p, MediaItem) else len(p) for p in self.parts)

    def count(self, modality: str) -> int:
        """Number of media items of ``modality``."""
        return sum(1 for p in self.parts if isinstance(p, MediaItem) and p.modality == modality)

    @property
    def audio_seconds(self) -> float:
        """Total audio duration."""
        return sum(p.seconds for p in self.parts if isinstance(p, MediaItem) and p.modality == "audio")


@dataclass(frozen=True)
class LossMask:
    """Which text positions carry loss (media, padding and document starts never do)."""

    text_before_first_media: bool = True
    """False: no loss on text before a document's first media item (e.g. a prompt)."""


def _stack(items: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """Stack same-shaped items; when they differ in exactly one dimension (audio length,
    number of image tiles), zero-pad that dimension and return each item's valid size."""
    shapes = {tuple(t.shape) for t in items}
    if len(shapes) == 1:
        return torch.stack(items), []
    ranks = {len(shape) for shape in shapes}
    varying = (
        [d for d in range(items[0].dim()) if len({shape[d] for shape in shapes}) > 1]
        if len(ranks) == 1
        else []
    )
    if len(varying) != 1:
        raise DataFormatError(f"media items of one batch differ in more than one dimension: {sorted(shapes)}")
    dim = varying[0]
    longest = max(t.shape[dim] for t in items)
    padded = []
    for t in items:
        pad = [0, 0] * (t.dim() - 1 - dim) + [0, longest - t.shape[dim]]
        padded.append(F.pad(t, pad))
    return torch.stack(padded), [t.shape[dim] for t in items]


def layout_batch(
    packs: Sequence[Sequence[MediaDocument]],
    seq_len: int,
    pad_id: int,
    ids: MediaTokenIds | None = None,
    loss_mask: LossMask = LossMask(),
) -> PackedBatch:
    """Lay packs out as a ``[len(packs), seq_len]`` PackedBatch with media spans.

    Labels are -100 on media (markers and placeholders), on padding, on each document's
    first position, on :class:`NoLossTokens` (prompts, user turns) and, if ``loss_mask``
    says so, on text before the first media item.
    """
    rows = len(packs)
    input_ids = torch.full((rows, seq_len), pad_id, dtype=torch.long)
    labels = torch.full((rows, seq_len), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((rows, seq_len), dtype=torch.long)
    doc_ids = torch.full((rows, seq_len), -1, dtype=torch.long)
    media: dict[str, list[tuple[MediaItem, tuple[int, int, int], str]]] = {}
    keys: list[list[str]] = []
    sources: list[list[str]] = []  # kept only when some document has a mix source
    for row, pack in enumerate(packs):
        offset = 0
        for doc_id, document in enumerate(pack):
            start = offset
            seen_media = False
            for part in document.parts:
                if isinstance(part, MediaItem):
                    if ids is None:
                        raise DataFormatError(
                            f"sample {document.key!r} has media but no media token ids were given"
                        )
                    run = [
                        ids.begin[part.modality],
                        *[ids.placeholder[part.modality]] * part.num_tokens,
                        ids.end[part.modality],
                    ]
                    input_ids[row, offset : offset + len(run)] = torch.tensor(run)
                    media.setdefault(part.modality, []).append(
                        (part, (row, offset + 1, part.num_tokens), document.key)
                    )
                    offset += len(run)
                    seen_media = True
                else:
                    tokens = torch.tensor(part, dtype=torch.long)
                    input_ids[row, offset : offset + len(tokens)] = tokens
                    carries_loss = seen_media or loss_mask.text_before_first_media
                    if carries_loss and not isinstance(part, NoLossTokens):
                        labels[row, offset : offset + len(tokens)] = tokens
                    offset += len(tokens)
            if offset > seq_len:
                raise DataFormatError(f"pack {row} holds {offset} positions, more than seq_len {seq_len}")
            labels[row, start] = IGNORE_INDEX
            position_ids[row, start:offset] = torch.arange(offset - start)
            doc_ids[row, start:offset] = doc_id
        keys.append([d.key for d in pack])
        sources.append([d.source for d in pack])
    batches = {}
    for modality, entries in media.items():
        assert ids is not None
        inputs, sizes = _stack([item.inputs for item, _, _ in entries])
        batches[modality] = MediaBatch(
            modality,
            inputs,
            [span for _, span, _ in entries],
            ids.placeholder[modality],
            [key for _, _, key in entries],
            sizes,
        )
    if not any(name for row in sources for name in row):
        sources = []
    return PackedBatch(input_ids, labels, position_ids, doc_ids, media=batches, keys=keys, sources=sources)
