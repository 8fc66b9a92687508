"""A packed document sees exactly what it sees alone: logits and loss, sdpa and eager."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mmpretrain.data.packing import PackedDocument, TextPacker, build_text_batch
from mmpretrain.model.packed import packed_logits, token_loss_sum
from mmpretrain.registry import LLMS

SEQ_LEN = 24
ATOL = 1e-5


def documents(vocab: int) -> list[PackedDocument]:
    generator = torch.Generator().manual_seed(1)
    lengths = [7, 3, 11, 5, 30, 2, 9]  # the 30-token document is split across the L boundary
    return [
        PackedDocument(f"d{i}", torch.randint(0, vocab - 1, (n,), generator=generator).tolist())
        for i, n in enumerate(lengths)
    ]


def check_parity(model: Any, vocab: int) -> int:
    packs = [p for p, _ in TextPacker(seq_len=SEQ_LEN, buffer_docs=100).pack(documents(vocab))]
    batch = build_text_batch(packs, SEQ_LEN, pad_id=vocab - 1)
    batch.validate()
    with torch.no_grad():
        logits = packed_logits(model, batch)
        assert torch.isfinite(logits).all()  # padding rows attend to themselves: no NaN
        checked = 0
        for row, pack in enumerate(packs):
            start = 0
            for document in pack:
                end = start + len(document.tokens)
                alone_ids = torch.tensor([document.tokens])
                alone = model(input_ids=alone_ids, labels=alone_ids, use_cache=False)
                torch.testing.assert_close(logits[row, start:end], alone.logits[0], atol=ATOL, rtol=0)
                if end - start > 1:
                    packed_loss = F.cross_entropy(
                        logits[row, start : end - 1], batch.labels[row, start + 1 : end]
                    )
                    torch.testing.assert_close(packed_loss, alone.loss, atol=ATOL, rtol=0)
                start = end
                checked += 1
    return checked


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_packed_logits_and_loss_equal_document_alone(
    name: str, attn: str, tiny_llm_config: Callable[..., Any]
) -> None:
    cfg = tiny_llm_config(name, attn_implementation=attn)
    model = LLMS.build(cfg).eval()
    assert check_parity(model, cfg.vocab_size) == 8  # 7 documents, one split in two


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_sliding_window_is_folded_into_the_mask(attn: str, tiny_llm_config: Callable[..., Any]) -> None:
    cfg = tiny_llm_config("mistral", attn_implementation=attn, sliding_window=4)
    model = LLMS.build(cfg).eval()
    assert check_parity(model, cfg.vocab_size) == 8


def test_without_the_mask_documents_would_leak(tiny_llm_config: Callable[..., Any]) -> None:
    """The parity above is not vacuous: a plain causal forward over the packed row differs."""
    cfg = tiny_llm_config("llama")
    model = LLMS.build(cfg).eval()
    batch = build_text_batch([[PackedDocument("a", [1, 2, 3]), PackedDocument("b", [4, 5, 6])]], 6, 0)
    with torch.no_grad():
        isolated = packed_logits(model, batch)
        leaky = model(input_ids=batch.input_ids, use_cache=False).logits
    assert (isolated[0, 3:] - leaky[0, 3:]).abs().max() > 1e-3
    torch.testing.assert_close(isolated[0, :3], leaky[0, :3], atol=ATOL, rtol=0)


def test_token_loss_sum_counts_label_tokens(tiny_llm_config: Callable[..., Any]) -> None:
    model = LLMS.build(tiny_llm_config("llama")).eval()
    batch = build_text_batch([[PackedDocument("a", [1, 2, 3]), PackedDocument("b", [4, 5])]], 8, 0)
    with torch.no_grad():
        loss_sum, count = token_loss_sum(packed_logits(model, batch), batch.labels)
    assert count == batch.num_label_tokens() == 3  # 2 of "a" + 1 of "b"
    assert loss_sum.item() > 0


@pytest.mark.parametrize(("name", "window"), [("llama", None), ("qwen2", None), ("mistral", 3)])
def test_chunked_attention_equals_the_dense_mask(
    name: str, window: int | None, tiny_llm_config: Callable[..., Any]
) -> None:
    """mmpt_chunked computes scores only inside chunks of whole documents: same logits at every
    document position and same gradients as the dense additive mask."""
    extra = {"sliding_window": window} if window else {}
    dense = LLMS.build(tiny_llm_config(name, **extra))
    chunked = LLMS.build(
        tiny_llm_config(name, attn_implementation="mmpt_chunked", attn_chunk_size=8, **extra)
    )
    chunked.load_state_dict(dense.state_dict())
    packs = [p for p, _ in TextPacker(seq_len=SEQ_LEN, buffer_docs=100).pack(documents(128))]
    batch = build_text_batch(packs, SEQ_LEN, pad_id=127)
    real = batch.doc_ids >= 0
    logits = {}
    for label, model in (("dense", dense), ("chunked", chunked)):
        out = packed_logits(model, batch)
        loss, count = token_loss_sum(out, batch.labels)
        (loss / count).backward()
        logits[label] = out.detach()
    torch.testing.assert_close(logits["chunked"][real], logits["dense"][real], atol=ATOL, rtol=0)
    for (param_name, a), (_, b) in zip(dense.named_parameters(), chunked.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=param_name)


def test_chunk_plan_groups_whole_documents() -> None:
    from mmpretrain.model.chunked_attention import plan_chunks

    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2, -1], [0, 0, 0, 0, 0, 0, 0, 1, -1, -1]])
    plan = plan_chunks(doc_ids, chunk_size=4, sliding_window=None, dtype=torch.float32)
    # row 0: [doc0 (3)] [doc1 (2) ...] ; a 7-long document widens every chunk to 7
    assert plan.gather.shape[1] == 7
    chunks = [plan.gather[c][plan.valid[c]].tolist() for c in range(plan.gather.shape[0])]
    assert chunks == [[0, 1, 2, 3, 4], [5, 6, 7, 8], [10, 11, 12, 13, 14, 15, 16], [17]]
