"""Run a transformers causal LM on a PackedBatch without attention across documents.

DESIGN.md section 2: train with ``use_cache=False`` and always pass an explicit mask.
sdpa and eager get the additive float block-causal mask (a 4-D bool mask is wrong for
eager, which adds the mask to the scores); flash-attention gets the reset position ids,
from which transformers derives the varlen ``cu_seqlens``; ``mmpt_chunked`` gets a chunk
plan and computes scores only inside chunks of whole documents. Sliding-window models have
the window folded into the mask.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mmpretrain.data.types import IGNORE_INDEX, PackedBatch
from mmpretrain.model.chunked_attention import NAME as CHUNKED
from mmpretrain.model.chunked_attention import plan_chunks


def packed_attention_kwargs(config: Any, batch: PackedBatch, dtype: torch.dtype) -> dict[str, Any]:
    """Keyword arguments (mask, position ids) for a causal LM forward on ``batch``."""
    implementation = getattr(config, "_attn_implementation", "sdpa")
    kwargs: dict[str, Any] = {"position_ids": batch.position_ids, "use_cache": False}
    if implementation == "flash_attention_2":
        return kwargs  # varlen from the reset position_ids (no padded-row mask needed)
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    if implementation == CHUNKED:  # scores only inside chunks of whole documents
        chunk = getattr(config, "mmpt_attn_chunk", 256)
        kwargs["chunk_plan"] = plan_chunks(batch.doc_ids, chunk, window, dtype)
        return kwargs
    kwargs["attention_mask"] = batch.attention_mask("additive", dtype=dtype, sliding_window=window)
    return kwargs


def packed_logits(model: Any, batch: PackedBatch, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Logits ``[B, L, V]`` of ``model`` on ``batch`` (token ids, or ``inputs_embeds``)."""
    dtype = next(model.parameters()).dtype
    kwargs = packed_attention_kwargs(model.config, batch, dtype)
    if inputs_embeds is not None:
        return model(inputs_embeds=inputs_embeds, **kwargs).logits
    return model(input_ids=batch.input_ids, **kwargs).logits


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy losses and the number of label tokens.

    Position ``i`` predicts ``labels[i + 1]`` (the shift transformers applies). Dividing
    the sum by the label-token count of the whole global batch, not per micro-batch,
    keeps the loss independent of gradient accumulation and world size.
    """
    # Shift the labels, not the logits: slicing [B, L, V] logits would copy them forward and
    # allocate a zero-filled gradient backward (several % of a small model's step).
    shifted_labels = torch.full_like(labels, IGNORE_INDEX)
    shifted_labels[:, :-1] = labels[:, 1:]
    shifted_labels = shifted_labels.reshape(-1)
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    loss_sum = F.cross_entropy(flat_logits, shifted_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, int((shifted_labels != IGNORE_INDEX).sum())
