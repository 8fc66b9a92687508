"""Media-aware packing: no token lost, media never split, budgets kept, valid spans."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmpretrain.data.layout import LossMask, MediaDocument, MediaItem, MediaTokenIds, layout_batch
from mmpretrain.data.media_packing import MediaPacker, PackBudget, pack_media_documents, split_media_document
from mmpretrain.data.packing import PackerState
from mmpretrain.data.types import IGNORE_INDEX
from mmpretrain.errors import DataFormatError

IDS = MediaTokenIds(
    placeholder={"image": 90, "audio": 93}, begin={"image": 91, "audio": 94}, end={"image": 92, "audio": 95}
)
PAD = 99


def image(tokens: int, tag: float = 0.0) -> MediaItem:
    """A stand-in preprocessed image (encoders arrive with the model issue)."""
    return MediaItem("image", tokens, torch.full((3, 4, 4), tag))


def audio(tokens: int, seconds: float, length: int = 16) -> MediaItem:
    return MediaItem("audio", tokens, torch.ones(length), seconds=seconds)


def text(n: int, start: int = 1) -> list[int]:
    return [(start + i) % 80 + 1 for i in range(n)]


part = st.one_of(
    st.integers(1, 30).map(text),
    st.integers(1, 12).map(image),
    st.tuples(st.integers(1, 8), st.floats(0.5, 5.0)).map(lambda a: audio(*a)),
)
documents = st.lists(st.lists(part, min_size=1, max_size=6), min_size=1, max_size=25).map(
    lambda docs: [MediaDocument(f"d{i}", parts) for i, parts in enumerate(docs)]
)


def flatten(document: MediaDocument) -> list[object]:
    """Text tokens one by one, media items whole: what must survive packing."""
    out: list[object] = []
    for p in document.parts:
        out.extend([p] if isinstance(p, MediaItem) else p)
    return out


@settings(max_examples=80, deadline=None, derandomize=True)
@given(docs=documents, seq_len=st.integers(16, 64), max_images=st.integers(2, 5))
def test_packing_keeps_every_token_never_splits_media_and_respects_budgets(
    docs: list[MediaDocument], seq_len: int, max_images: int
) -> None:
    budget = PackBudget(max_images=max_images, max_audio_seconds=12.0)
    packer = MediaPacker(seq_len=seq_len, budget=budget, buffer_docs=7, seed=1)
    packs = [p for p, _ in packer.pack(docs)]
    for pack in packs:
        assert sum(d.length for d in pack) <= seq_len
        assert sum(d.count("image") for d in pack) <= max_images
        assert sum(d.audio_seconds for d in pack) <= 12.0 + 1e-9
    pieces: dict[str, dict[int, MediaDocument]] = {}
    for pack in packs:
        for d in pack:
            key, _, number = d.key.partition("#")
            pieces.setdefault(key, {})[int(number or 0)] = d
    for d in docs:  # the pieces reassemble to the document: no token lost, media whole
        parts = pieces[d.key]
        assert [x for i in sorted(parts) for x in flatten(parts[i])] == flatten(d)
    batch = layout_batch(packs, seq_len, PAD, IDS)
    batch.validate()  # every span holds exactly its item's placeholders
    for modality, media in batch.media.items():
        assert len(media.spans) == sum(d.count(modality) for pack in packs for d in pack)


def test_split_cuts_only_at_text_positions() -> None:
    doc = MediaDocument("d", [text(5), image(6), text(3), image(6)])  # lengths 5, 8, 3, 8
    pieces = split_media_document(doc, seq_len=12)
    assert [p.length for p in pieces] == [5, 11, 8]  # text 5 | image 8 + text 3 | image 8
    assert [p.key for p in pieces] == ["d#0", "d#1", "d#2"]
    assert [x for p in pieces for x in flatten(p)] == flatten(doc)
    with pytest.raises(DataFormatError, match=r"'big': a image item \(22 positions, 0.0 s\) cannot fit"):
        split_media_document(MediaDocument("big", [image(20)]), seq_len=12)


def test_documents_over_the_media_budget_are_split_between_items() -> None:
    doc = MediaDocument("many", [image(1), text(2), image(1), text(2), image(1)])
    pieces = split_media_document(doc, 64, PackBudget(max_images=2))
    assert [p.count("image") for p in pieces] == [2, 1]
    assert [x for p in pieces for x in flatten(p)] == flatten(doc)
    with pytest.raises(DataFormatError, match="'many' alone exceeds the pack budget max_images=2"):
        pack_media_documents([doc], 64, PackBudget(max_images=2))  # unsplit: reported, not packed
    with pytest.raises(DataFormatError, match="cannot fit a pack"):
        split_media_document(MediaDocument("long", [audio(2, 9.0)]), 64, PackBudget(max_audio_seconds=5.0))


def test_layout_labels_spans_and_loss_mask() -> None:
    doc = MediaDocument("a", [text(3, start=10), image(2, tag=1.0), text(2, start=20)])
    batch = layout_batch([[doc]], 12, PAD, IDS)
    batch.validate()
    assert batch.input_ids[0].tolist() == [11, 12, 13, 91, 90, 90, 92, 21, 22, PAD, PAD, PAD]
    n = IGNORE_INDEX
    assert batch.labels[0].tolist() == [n, 12, 13, n, n, n, n, 21, 22, n, n, n]
    assert batch.media["image"].spans == [(0, 4, 2)]
    assert batch.media["image"].keys == ["a"]
    assert torch.equal(batch.media["image"].inputs[0], torch.full((3, 4, 4), 1.0))
    masked = layout_batch([[doc]], 12, PAD, IDS, LossMask(text_before_first_media=False))
    assert masked.labels[0].tolist() == [n, n, n, n, n, n, n, 21, 22, n, n, n]


def test_variable_length_audio_is_padded_with_sizes() -> None:
    docs = [MediaDocument("a", [audio(2, 1.0, length=10)]), MediaDocument("b", [audio(3, 2.0, length=16)])]
    batch = layout_batch([docs], 16, PAD, IDS)
    batch.validate()
    assert batch.media["audio"].inputs.shape == (2, 16)
    assert batch.media["audio"].sizes == [10, 16]


def test_media_packer_resumes_exactly() -> None:
    docs = [MediaDocument(f"d{i}", [text(5 + i % 7), image(4 + i % 3)]) for i in range(60)]
    packer = MediaPacker(seq_len=48, budget=PackBudget(max_images=3), buffer_docs=16, seed=2)
    full = list(packer.pack(docs))
    for stop in (1, 9, len(full) - 1):
        state = full[stop - 1][1]
        resumed = [p for p, _ in packer.pack(docs[state.round_start :], state)]
        assert resumed == [p for p, _ in full[stop:]]
    assert full[-1][1] == PackerState(60, 0)
