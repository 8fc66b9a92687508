"""PackedBatch invariants (validate) and attention masks, checked against brute force."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmpretrain.data import MediaBatch, PackedBatch, Sample, Segment, VarlenInfo
from mmpretrain.errors import DataFormatError

IMAGE_ID = 99
AUDIO_ID = 98
PAD_ID = 0
PLACEHOLDERS = {"image": IMAGE_ID, "audio": AUDIO_ID}


def build(rows: list[list[list[int]]], length: int, with_keys: bool = True) -> PackedBatch:
    """Pack documents (lists of token ids) into a correct PackedBatch, the way a packer must.

    Each run of a placeholder id inside a document becomes one media item.
    """
    n_rows = len(rows)
    input_ids = torch.full((n_rows, length), PAD_ID, dtype=torch.long)
    labels = torch.full((n_rows, length), -100, dtype=torch.long)
    position_ids = torch.zeros((n_rows, length), dtype=torch.long)
    doc_ids = torch.full((n_rows, length), -1, dtype=torch.long)
    spans: dict[str, list[tuple[int, int, int]]] = {m: [] for m in PLACEHOLDERS}
    item_keys: dict[str, list[str]] = {m: [] for m in PLACEHOLDERS}
    keys: list[list[str]] = []
    counter = 0
    for r, docs in enumerate(rows):
        pos = 0
        row_keys = []
        for d, tokens in enumerate(docs):
            key = f"shard-000/{counter}"
            counter += 1
            row_keys.append(key)
            for i, tok in enumerate(tokens):
                p = pos + i
                input_ids[r, p] = tok
                position_ids[r, p] = i
                doc_ids[r, p] = d
                if i > 0 and tok not in PLACEHOLDERS.values():
                    labels[r, p] = tok
            for modality, pid in PLACEHOLDERS.items():
                i = 0
                while i < len(tokens):
                    if tokens[i] == pid:
                        j = i
                        while j < len(tokens) and tokens[j] == pid:
                            j += 1
                        spans[modality].append((r, pos + i, j - i))
                        item_keys[modality].append(key)
                        i = j
                    else:
                        i += 1
            pos += len(tokens)
        assert pos <= length
        keys.append(row_keys)
    media = {
        m: MediaBatch(
            modality=m,
            inputs=torch.zeros(len(spans[m]), 2, 3),
            spans=spans[m],
            placeholder_id=PLACEHOLDERS[m],
            keys=item_keys[m] if with_keys else [],
        )
        for m in PLACEHOLDERS
        if spans[m]
    }
    return PackedBatch(
        input_ids=input_ids,
        labels=labels,
        position_ids=position_ids,
        doc_ids=doc_ids,
        media=media,
        keys=keys if with_keys else [],
    )


# Row 0: doc 0 (5 tokens) | doc 1 (7 tokens, an image of 3 placeholders at 6..8).
# Row 1: doc 0 (4) | doc 1 (3, an audio item of 2 placeholders at 5..6) | doc 2 (2) | 3 padding.
ROWS = [
    [[1, 5, 6, 7, 8], [1, IMAGE_ID, IMAGE_ID, IMAGE_ID, 9, 10, 11]],
    [[1, 12, 13, 14], [1, AUDIO_ID, AUDIO_ID], [1, 17]],
]
L = 12


def valid_batch(with_keys: bool = True) -> PackedBatch:
    return build(ROWS, L, with_keys)


def brute_force_allowed(doc_ids: torch.Tensor, window: int | None = None) -> torch.Tensor:
    rows, length = doc_ids.shape
    out = torch.zeros(rows, 1, length, length, dtype=torch.bool)
    for b in range(rows):
        for i in range(length):
            for j in range(length):
                di, dj = int(doc_ids[b, i]), int(doc_ids[b, j])
                ok = di >= 0 and di == dj and j <= i
                if window is not None:
                    ok = ok and i - j < window
                out[b, 0, i, j] = ok or i == j
    return out


# ---------------------------------------------------------------------------- validate


def test_valid_batch_passes() -> None:
    batch = valid_batch()
    batch.validate()
    assert batch.media["image"].spans == [(0, 6, 3)]
    assert batch.media["audio"].spans == [(1, 5, 2)]
    assert batch.keys[1] == ["shard-000/2", "shard-000/3", "shard-000/4"]
    # 4 + 3 (doc 0 row 0: tokens 1..4, doc 1: 9, 10, 11) + 3 + 0 + 1 label tokens.
    assert batch.num_label_tokens() == 4 + 3 + 3 + 0 + 1


def test_valid_batch_without_keys_passes() -> None:
    valid_batch(with_keys=False).validate()


def _corrupt_position(b: PackedBatch) -> None:
    b.position_ids[0, 5] = 5  # doc 1 of row 0 starts at 5 and must restart at 0


def _corrupt_first_label(b: PackedBatch) -> None:
    b.labels[1, 4] = b.input_ids[1, 4]  # first position of row 1 doc 1


def _corrupt_stray_placeholder(b: PackedBatch) -> None:
    b.input_ids[1, 2] = IMAGE_ID
    b.labels[1, 2] = -100


def _corrupt_span_crosses_doc(b: PackedBatch) -> None:
    b.input_ids[0, 4:7] = IMAGE_ID
    b.input_ids[0, 7:9] = 3
    b.labels[0, 4] = -100
    b.media["image"].spans = [(0, 4, 3)]


def _corrupt_span_off_end(b: PackedBatch) -> None:
    b.media["image"].spans = [(0, 10, 3)]


def _corrupt_dtype(b: PackedBatch) -> None:
    b.labels = b.labels.to(torch.int32)


def _corrupt_shape(b: PackedBatch) -> None:
    b.position_ids = b.position_ids[:, :-1]


def _corrupt_label_mismatch(b: PackedBatch) -> None:
    b.labels[0, 2] = 42


def _corrupt_label_at_padding(b: PackedBatch) -> None:
    b.labels[1, 10] = 0


def _corrupt_label_at_placeholder(b: PackedBatch) -> None:
    b.labels[0, 7] = IMAGE_ID


def _corrupt_padding_not_trailing(b: PackedBatch) -> None:
    b.doc_ids[1, 4] = -1


def _corrupt_doc_numbering(b: PackedBatch) -> None:
    b.doc_ids[1, 7:9] = 3


def _corrupt_placeholder_inside_span(b: PackedBatch) -> None:
    b.input_ids[0, 7] = 4


def _corrupt_overlap(b: PackedBatch) -> None:
    b.media["image"].spans.append((0, 7, 2))
    b.media["image"].keys.append("shard-000/1")
    b.media["image"].inputs = torch.zeros(2, 2, 3)


def _corrupt_item_count(b: PackedBatch) -> None:
    b.media["image"].inputs = torch.zeros(2, 2, 3)


@pytest.mark.parametrize(
    ("corrupt", "key", "fragment"),
    [
        (_corrupt_position, "shard-000/1", "position_ids[5] is 5; expected 0"),
        (_corrupt_first_label, "shard-000/3", "first position 4"),
        (_corrupt_stray_placeholder, "shard-000/2", "stray image placeholder"),
        (_corrupt_span_crosses_doc, "shard-000/0", "inside one document"),
        (_corrupt_span_off_end, "shard-000/1", "outside"),
        (_corrupt_dtype, "shard-000/0", "torch.int32"),
        (_corrupt_shape, "shard-000/0", "shape"),
        (_corrupt_label_mismatch, "shard-000/0", "input_ids holds 6"),
        (_corrupt_label_at_padding, "row 1 padding", "padding position 10"),
        (_corrupt_label_at_placeholder, "shard-000/1", "placeholder position 7"),
        (_corrupt_padding_not_trailing, "shard-000/3", "padding must be trailing"),
        (_corrupt_doc_numbering, "after sample 'shard-000/3'", "doc_ids[7] is 3; expected 2"),
        (_corrupt_placeholder_inside_span, "shard-000/1", "holds 1 non-placeholder tokens"),
        (_corrupt_overlap, "shard-000/1", "overlaps an earlier image span at position 7"),
        (_corrupt_item_count, "shard-000/0", "2 inputs but 1 spans"),
    ],
)
def test_corruption_raises_naming_sample(corrupt, key: str, fragment: str) -> None:
    batch = valid_batch()
    corrupt(batch)
    with pytest.raises(DataFormatError) as info:
        batch.validate()
    message = str(info.value)
    assert message.startswith("PackedBatch")
    assert key in message
    assert fragment in message


def test_span_error_message_names_positions_and_expected_count() -> None:
    batch = valid_batch()
    batch.input_ids[0, 6] = 3
    with pytest.raises(DataFormatError) as info:
        batch.validate()
    assert str(info.value) == (
        "PackedBatch: sample 'shard-000/1' (row 0, doc 1): image span at positions [6, 9) "
        "holds 1 non-placeholder tokens; expected 3 image placeholders (id 99)"
    )


def test_errors_without_keys_name_row_and_doc() -> None:
    batch = valid_batch(with_keys=False)
    batch.position_ids[1, 8] = 0
    with pytest.raises(DataFormatError, match=r"row 1 doc 2: position_ids\[8\] is 0; expected 1"):
        batch.validate()


def test_keys_must_match_documents() -> None:
    batch = valid_batch()
    batch.keys[1].pop()
    with pytest.raises(DataFormatError, match="row 1 has 3 documents but 2 keys"):
        batch.validate()


def test_to_and_label_count() -> None:
    batch = valid_batch()
    moved = batch.to("cpu")
    assert moved is not batch
    assert torch.equal(moved.input_ids, batch.input_ids)
    assert torch.equal(moved.media["image"].inputs, batch.media["image"].inputs)
    assert moved.keys == batch.keys
    moved.validate()
    assert moved.num_label_tokens() == int((batch.labels != -100).sum())


# ----------------------------------------------------------------------- attention masks


def test_additive_mask_matches_brute_force() -> None:
    batch = valid_batch()
    mask = batch.attention_mask("additive")
    assert mask.shape == (2, 1, L, L)
    assert mask.dtype == torch.float32
    allowed = brute_force_allowed(batch.doc_ids)
    expected = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
    assert torch.equal(mask, expected)


def test_padding_attends_only_to_itself() -> None:
    batch = valid_batch()
    mask = batch.attention_mask("bool")
    for pos in (9, 10, 11):  # row 1 padding
        row = mask[1, 0, pos]
        assert row.sum() == 1 and bool(row[pos])
        # ... and no real token attends to padding.
        assert not mask[1, 0, :9, pos].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_softmax_over_additive_mask_has_no_nan(dtype: torch.dtype) -> None:
    batch = valid_batch()
    mask = batch.attention_mask("additive", dtype=dtype)
    assert mask.dtype == dtype
    scores = torch.randn(2, 1, L, L, generator=torch.Generator().manual_seed(0)).to(dtype)
    probs = torch.softmax((scores + mask).float(), dim=-1)
    assert not torch.isnan(probs).any()
    # Masked entries get exactly zero weight.
    assert torch.all(probs[~batch.attention_mask("bool")] == 0)


def test_bool_mask_equals_additive_zero() -> None:
    batch = valid_batch()
    assert torch.equal(batch.attention_mask("bool"), batch.attention_mask("additive") == 0)


def test_sdpa_bool_and_additive_agree() -> None:
    batch = valid_batch()
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, L, 4, generator=gen) for _ in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    out_add = sdpa(q, k, v, attn_mask=batch.attention_mask("additive"))
    out_bool = sdpa(q, k, v, attn_mask=batch.attention_mask("bool"))
    assert torch.allclose(out_add, out_bool, atol=1e-6)
    # Document 1 of row 0 alone gives the same output as inside the pack.
    alone = sdpa(q[:1, :, 5:12], k[:1, :, 5:12], v[:1, :, 5:12], is_causal=True)
    assert torch.allclose(out_add[:1, :, 5:12], alone, atol=1e-6)


def test_sliding_window_mask() -> None:
    batch = valid_batch()
    allowed = brute_force_allowed(batch.doc_ids, window=3)
    assert torch.equal(batch.attention_mask("bool", sliding_window=3), allowed)


def test_varlen_known_layout() -> None:
    info = valid_batch().attention_mask("varlen")
    assert isinstance(info, VarlenInfo)
    assert info.cu_seqlens.dtype == torch.int32
    # Row 0: docs of 5 and 7; row 1 (offset 12): docs of 4, 3, 2, then 3 padding tokens.
    assert info.cu_seqlens.tolist() == [0, 5, 12, 16, 19, 21, 22, 23, 24]
    assert info.max_seqlen == 7


def test_unknown_mask_kind() -> None:
    with pytest.raises(ValueError, match="additive, bool or varlen"):
        valid_batch().attention_mask("dense")  # type: ignore[arg-type]


@st.composite
def packed_rows(draw: st.DrawFn) -> tuple[list[list[list[int]]], int]:
    length = draw(st.integers(1, 20))
    rows = []
    for _ in range(draw(st.integers(1, 3))):
        docs, used = [], 0
        while used < length and draw(st.booleans()):
            n = draw(st.integers(1, length - used))
            tokens = [1] + [draw(st.sampled_from([2, 3, 4, IMAGE_ID, AUDIO_ID])) for _ in range(n - 1)]
            docs.append(tokens)
            used += n
        rows.append(docs)
    return rows, length


@settings(max_examples=60, deadline=None, derandomize=True)
@given(packed_rows())
def test_property_masks_and_validate(case: tuple[list[list[list[int]]], int]) -> None:
    rows, length = case
    batch = build(rows, length)
    batch.validate()
    allowed = brute_force_allowed(batch.doc_ids)
    additive = batch.attention_mask("additive")
    assert torch.equal(additive == 0, allowed)
    assert torch.equal(batch.attention_mask("bool"), allowed)
    info = batch.attention_mask("varlen")
    cu = info.cu_seqlens.tolist()
    assert cu[0] == 0 and cu[-1] == len(rows) * length
    # Two flattened tokens share a varlen sequence exactly when the dense mask links them.
    seq_of = torch.zeros(len(rows) * length, dtype=torch.long)
    for s, (a, b) in enumerate(itertools.pairwise(cu)):
        assert b > a
        seq_of[a:b] = s
    seq_of = seq_of.view(len(rows), length)
    same_seq = seq_of[:, :, None] == seq_of[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    assert torch.equal((same_seq & causal)[:, None], allowed)
    assert info.max_seqlen == max(b - a for a, b in itertools.pairwise(cu))


# ----------------------------------------------------------------------- Segment, Sample


def test_segments_and_sample() -> None:
    text = Segment("text", text="hello")
    image = Segment("image", data=b"\xff\xd8", member="0.jpg")
    audio = Segment("audio", data=b"RIFF", text="a transcript")
    sample = Sample(key="k", source="demo", segments=[text, image, audio])
    assert sample.media_segments() == [image, audio]
    assert not text.is_media and image.is_media


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"kind": "video", "data": b"x"}, "kind 'video' is not one of text, image, audio"),
        ({"kind": "text"}, "needs text as a str"),
        ({"kind": "text", "text": "a", "data": b"x"}, "cannot carry media data"),
        ({"kind": "image"}, "needs data as bytes"),
        ({"kind": "audio", "data": "not bytes"}, "needs data as bytes"),
        ({"kind": "image", "data": b"x", "text": "caption"}, "cannot carry text"),
        ({"kind": "audio", "data": b"x", "text": 3}, "transcript must be a str"),
    ],
)
def test_bad_segments(kwargs: dict, fragment: str) -> None:
    with pytest.raises(DataFormatError, match=fragment):
        Segment(**kwargs)


def test_sample_needs_segments() -> None:
    with pytest.raises(DataFormatError, match="sample 'k': has no segments"):
        Sample(key="k", source="", segments=[])
