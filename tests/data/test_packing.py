"""Packing invariants (hypothesis), the streaming packer's exact resume, text batches."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmpretrain.data.packing import (
    PackedDocument,
    PackerState,
    TextPacker,
    best_fit_pack,
    build_text_batch,
    split_tokens,
    text_efficiency,
)
from mmpretrain.data.packing_baselines import (
    dynamic_padding_batch,
    first_fit_decreasing_pack,
    next_fit_pack,
    pad_to_length_batch,
)
from mmpretrain.data.types import IGNORE_INDEX

PACKERS = [best_fit_pack, first_fit_decreasing_pack, next_fit_pack]

lengths_and_capacity = st.integers(1, 64).flatmap(
    lambda cap: st.tuples(st.lists(st.integers(0, cap), max_size=200), st.just(cap))
)


@pytest.mark.parametrize("packer", PACKERS, ids=lambda f: f.__name__)
@settings(max_examples=150, deadline=None, derandomize=True)
@given(case=lengths_and_capacity)
def test_every_index_once_and_no_bin_overflows(packer, case) -> None:
    lengths, capacity = case
    bins = packer(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    assert all(b for b in bins)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(case=lengths_and_capacity)
def test_no_two_best_fit_bins_could_be_merged(case) -> None:
    """Any-fit property: a bin is opened only when its first item fits no open bin, so
    the loads of any two bins sum to more than the capacity."""
    lengths, capacity = case
    loads = [sum(lengths[i] for i in b) for b in best_fit_pack(lengths, capacity)]
    assert all(loads[i] + loads[j] > capacity for i in range(len(loads)) for j in range(i + 1, len(loads)))


def test_best_fit_places_into_tightest_bin() -> None:
    # 6 opens bin0 (free 4), 5 opens bin1 (free 5); 4 goes to bin0 (tightest fit), 5 to bin1
    assert best_fit_pack([6, 5, 4, 5], 10) == [[0, 2], [1, 3]]


def test_best_fit_rejects_overlong_and_negative() -> None:
    with pytest.raises(ValueError, match="item 1 has length 11"):
        best_fit_pack([3, 11], 10)
    with pytest.raises(ValueError, match="outside"):
        best_fit_pack([-1], 10)
    assert best_fit_pack([], 10) == []


@settings(max_examples=100, deadline=None, derandomize=True)
@given(tokens=st.lists(st.integers(0, 1000), min_size=1, max_size=300), seq_len=st.integers(1, 64))
def test_split_documents_reassemble(tokens: list[int], seq_len: int) -> None:
    pieces = split_tokens(tokens, seq_len)
    assert [t for p in pieces for t in p] == tokens
    assert all(1 <= len(p) <= seq_len for p in pieces)


def random_documents(n: int, seed: int = 0, max_len: int = 90) -> list[PackedDocument]:
    rng = random.Random(seed)
    return [
        PackedDocument(f"doc{i}", [rng.randrange(100) for _ in range(rng.randint(1, max_len))])
        for i in range(n)
    ]


def test_text_packer_keeps_every_token_and_splits_long_documents() -> None:
    documents = random_documents(100)
    packer = TextPacker(seq_len=32, buffer_docs=16, seed=3)
    packs = [pack for pack, _ in packer.pack(documents)]
    assert all(sum(len(d.tokens) for d in pack) <= 32 for pack in packs)
    pieces: dict[str, dict[int, list[int]]] = {}
    for pack in packs:
        for document in pack:
            key, _, number = document.key.partition("#")
            pieces.setdefault(key, {})[int(number or 0)] = document.tokens
    assert any(len(parts) > 1 for parts in pieces.values())  # some documents were split
    for document in documents:  # the pieces of every document reassemble to it
        parts = pieces[document.key]
        assert [t for i in sorted(parts) for t in parts[i]] == document.tokens


@pytest.mark.parametrize("stop_after", [1, 5, 17, 30])
def test_text_packer_resumes_exactly(stop_after: int) -> None:
    documents = random_documents(120, seed=1)
    packer = TextPacker(seq_len=64, buffer_docs=25, seed=7)
    full = list(packer.pack(documents))
    _pack, state = full[stop_after - 1]
    resumed = [p for p, _ in packer.pack(documents[state.round_start :], state)]
    assert resumed == [p for p, _ in full[stop_after:]]
    assert PackerState(**state.as_dict()) == state


def test_build_text_batch_follows_the_label_and_position_rules() -> None:
    pack = [PackedDocument("a", [5, 6, 7]), PackedDocument("b", [8, 9])]
    batch = build_text_batch([pack, [PackedDocument("c", [1])]], seq_len=6, pad_id=0)
    batch.validate()
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 0], [1, 0, 0, 0, 0, 0]]
    assert batch.labels.tolist() == [
        [IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9, IGNORE_INDEX],
        [IGNORE_INDEX] * 6,
    ]
    assert batch.position_ids[0].tolist() == [0, 1, 2, 0, 1, 0]
    assert batch.doc_ids.tolist() == [[0, 0, 0, 1, 1, -1], [0, -1, -1, -1, -1, -1]]
    assert batch.keys == [["a", "b"], ["c"]]
    assert batch.num_label_tokens() == 3


def test_no_label_crosses_a_document_boundary() -> None:
    documents = random_documents(40, seed=2)
    packs = [p for p, _ in TextPacker(seq_len=48, buffer_docs=40).pack(documents)]
    batch = build_text_batch(packs, 48, pad_id=100)
    batch.validate()
    # the token predicted at i+1 must belong to the same document as position i
    target = batch.labels[:, 1:] != IGNORE_INDEX
    same_doc = batch.doc_ids[:, 1:] == batch.doc_ids[:, :-1]
    assert bool((~target | same_doc).all())
    assert bool((batch.doc_ids[:, 1:][target] >= 0).all())


def test_efficiency_of_best_fit_beats_baselines() -> None:
    rng = random.Random(0)
    lengths = [min(256, max(1, int(rng.lognormvariate(3.5, 1.0)))) for _ in range(2000)]
    efficiency = {f.__name__: text_efficiency(f(lengths, 256), lengths, 256) for f in PACKERS}
    assert efficiency["best_fit_pack"] >= efficiency["first_fit_decreasing_pack"] - 1e-9
    assert efficiency["best_fit_pack"] > efficiency["next_fit_pack"]
    assert efficiency["best_fit_pack"] > 0.99


def test_padding_collators() -> None:
    documents = [PackedDocument("a", [1, 2, 3]), PackedDocument("b", list(range(10, 20)))]
    padded = pad_to_length_batch(documents, seq_len=8, pad_id=0)
    padded.validate()
    assert padded.input_ids.shape == (2, 8)
    assert padded.input_ids[1].tolist() == list(range(10, 18))  # truncated to its first piece
    dynamic = dynamic_padding_batch(documents[:1], pad_id=0, max_len=8)
    dynamic.validate()
    assert dynamic.input_ids.tolist() == [[1, 2, 3]]
    assert torch.equal(dynamic.doc_ids, torch.zeros(1, 3, dtype=torch.long))
