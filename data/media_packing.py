"""Media-aware packing: interleaved documents with image/audio items into PackedBatches.

Each media item becomes ``<begin> + num_tokens x <placeholder> + <end>`` in the token
stream; ``num_tokens`` comes from an injected function (the model's
``connector.num_tokens(encoder.num_tokens(item))``), so variable-size media are never
assumed away. Packing is :func:`best_fit_pack` with per-pack media budgets; media are
never split, and documents longer than L are split only at text positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from mmpretrain.data.layout import MediaDocument, MediaItem, Part
from mmpretrain.data.packing import PackLimit, RoundPacker, best_fit_pack
from mmpretrain.errors import DataFormatError


@dataclass(frozen=True)
class PackBudget:
    """Per-pack media budgets (None = unlimited)."""

    max_images: int | None = 8
    max_audio_seconds: float | None = None


def split_media_document(
    document: MediaDocument, seq_len: int, budget: PackBudget | None = None
) -> list[MediaDocument]:
    """Split a document that does not fit one pack (longer than ``seq_len``, or over the
    ``budget``'s images or audio seconds) into pieces that do, cutting only inside or
    between text runs, never inside a media item. A single media item that cannot fit
    any pack is a DataFormatError."""
    budget = budget or PackBudget(max_images=None)
    max_images = budget.max_images if budget.max_images is not None else float("inf")
    max_seconds = budget.max_audio_seconds if budget.max_audio_seconds is not None else float("inf")
    if (
        document.length <= seq_len
        and document.count("image") <= max_images
        and document.audio_seconds <= max_seconds
    ):
        return [document]
    pieces: list[list[Part]] = [[]]
    room, images, seconds = seq_len, 0, 0.0

    def new_piece() -> None:
        nonlocal room, images, seconds
        pieces.append([])
        room, images, seconds = seq_len, 0, 0.0

    for part in document.parts:
        if isinstance(part, MediaItem):
            if (
                part.length > seq_len
                or part.seconds > max_seconds
                or (part.modality == "image" and max_images < 1)
            ):
                raise DataFormatError(
                    f"sample {document.key!r}: a {part.modality} item ({part.length} positions, "
                    f"{part.seconds:.1f} s) cannot fit a pack of seq_len {seq_len} within the media budget; "
                    "raise train.seq_len or the budget, or lower the encoder's tokens"
                )
            is_image = part.modality == "image"
            if part.length > room or images + is_image > max_images or seconds + part.seconds > max_seconds:
                new_piece()
            pieces[-1].append(part)
            room, images, seconds = room - part.length, images + is_image, seconds + part.seconds
            continue
        tokens, wrap = list(part), type(part)  # wrap keeps NoLossTokens what they are
        while tokens:
            if room == 0:
                new_piece()
            pieces[-1].append(wrap(tokens[:room]))
            room -= len(tokens[:room])
            tokens = tokens[len(pieces[-1][-1]) :]
    pieces = [p for p in pieces if p]
    return [replace(document, key=f"{document.key}#{i}", parts=parts) for i, parts in enumerate(pieces)]


def pack_media_documents(
    documents: Sequence[MediaDocument], seq_len: int, budget: PackBudget
) -> list[list[MediaDocument]]:
    """Best-fit packs of (already split) documents within the media budgets."""
    limits = []
    if budget.max_images is not None:
        limits.append(PackLimit([d.count("image") for d in documents], budget.max_images))
    if budget.max_audio_seconds is not None:
        limits.append(PackLimit([d.audio_seconds for d in documents], budget.max_audio_seconds))
    for limit, name in zip(limits, ("max_images", "max_audio_seconds"), strict=False):
        over = next((i for i, a in enumerate(limit.amounts) if a > limit.capacity), None)
        if over is not None:
            raise DataFormatError(
                f"sample {documents[over].key!r} alone exceeds the pack budget {name}={limit.capacity} "
                f"({limit.amounts[over]}); raise the budget or drop the sample"
            )
    bins = best_fit_pack([d.length for d in documents], seq_len, limits)
    return [[documents[i] for i in bin_] for bin_ in bins]


@dataclass
class MediaPacker(RoundPacker[MediaDocument]):
    """Round packer for interleaved documents: text-only splitting of long documents,
    best-fit packing within the media ``budget``."""

    budget: PackBudget = field(default_factory=PackBudget)

    def pack_round(self, buffer: list[MediaDocument]) -> list[list[MediaDocument]]:
        """Split long documents at text positions and pack the round within budgets."""
        pieces = [p for document in buffer for p in split_media_document(document, self.seq_len, self.budget)]
        return pack_media_documents(pieces, self.seq_len, self.budget)
