"""Chunked packed attention: compute scores only inside chunks of whole documents.

A packed row of length L holds many short documents, yet a dense block-causal mask still
makes attention compute all L x L scores and mask most of them away. This attention
implementation (``attn_implementation: mmpt_chunked``) groups consecutive documents of a
row into chunks of at most ``C = max(chunk_size, longest document)`` positions, runs
sdpa on ``[chunks, heads, C, C]`` with the block-causal mask of each chunk, and scatters
the results back: the same outputs as the dense mask at every document position, for
about ``C / L`` of the attention work. Padding positions get zeros (they carry no loss
and attend to nothing else either way). It needs the chunk plan that
:func:`mmpretrain.model.packed.packed_attention_kwargs` passes through the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

NAME = "mmpt_chunked"


@dataclass(frozen=True)
class ChunkPlan:
    """Where each chunk's positions sit in the flattened ``[B * L]`` batch."""

    gather: torch.Tensor  # [n, C] long: flat position of each chunk slot (0 for empty slots)
    valid: torch.Tensor  # [n, C] bool: the slot holds a document position
    mask: torch.Tensor  # [n, 1, C, C] additive block-causal mask within each chunk
    batch: int
    length: int


def plan_chunks(
    doc_ids: torch.Tensor, chunk_size: int, sliding_window: int | None, dtype: torch.dtype
) -> ChunkPlan:
    """Group each row's documents (``doc_ids`` ``[B, L]``, -1 = padding) into chunks."""
    batch, length = doc_ids.shape
    rows = doc_ids.tolist()
    runs: list[list[tuple[int, int]]] = []  # per row: (start, length) of each document
    longest = 1
    for row in rows:
        row_runs: list[tuple[int, int]] = []
        for position, doc in enumerate(row):
            if doc < 0:
                break  # padding is trailing
            if row_runs and row[position - 1] == doc and position > 0:
                start, size = row_runs[-1]
                row_runs[-1] = (start, size + 1)
            else:
                row_runs.append((position, 1))
        runs.append(row_runs)
        longest = max([longest, *(size for _, size in row_runs)])
    width = max(chunk_size, longest)
    chunks: list[list[tuple[int, int, int]]] = []  # per chunk: (flat start, size, local doc)
    for r, row_runs in enumerate(runs):
        current: list[tuple[int, int, int]] = []
        used = 0
        for start, size in row_runs:
            if used + size > width and current:
                chunks.append(current)
                current, used = [], 0
            current.append((r * length + start, size, len(current)))
            used += size
        if current:
            chunks.append(current)
    count = max(len(chunks), 1)
    gather = torch.zeros(count, width, dtype=torch.long)
    local_doc = torch.full((count, width), -1, dtype=torch.long)
    for c, chunk in enumerate(chunks):
        offset = 0
        for flat_start, size, doc in chunk:
            gather[c, offset : offset + size] = torch.arange(flat_start, flat_start + size)
            local_doc[c, offset : offset + size] = doc
            offset += size
    valid = local_doc >= 0
    index = torch.arange(width)
    allowed = (local_doc[:, :, None] == local_doc[:, None, :]) & (index[None, :] <= index[:, None])
    if sliding_window is not None:
        allowed &= index[:, None] - index[None, :] < sliding_window
    allowed = (allowed & valid[:, :, None]) | torch.eye(width, dtype=torch.bool)  # empty slots see themselves
    mask = torch.where(allowed, torch.zeros((), dtype=dtype), torch.finfo(dtype).min)[:, None]
    device = doc_ids.device
    return ChunkPlan(gather.to(device), valid.to(device), mask.to(device), batch, length)


def chunked_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    chunk_plan: ChunkPlan | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention interface: ``query`` ``[B, H, L, D]``, ``key``/``value``
    ``[B, Hkv, L, D]`` -> ``([B, L, H, D], None)``."""
    if chunk_plan is None:
        raise RuntimeError(
            f"attn_implementation {NAME} needs a chunk plan: run the model through MultimodalLM / "
            "packed_attention_kwargs, or use sdpa"
        )
    batch, heads, length, dim = query.shape
    plan = chunk_plan

    def gather(states: torch.Tensor) -> torch.Tensor:
        flat = states.transpose(1, 2).reshape(batch * length, states.shape[1], dim)
        return flat[plan.gather].transpose(1, 2)  # [n, H, C, D]

    out = F.scaled_dot_product_attention(
        gather(query),
        gather(key),
        gather(value),
        attn_mask=plan.mask.to(query.dtype),
        dropout_p=dropout if module.training else 0.0,
        scale=scaling,
        enable_gqa=key.shape[1] != heads,
    )
    chunk_out = out.transpose(1, 2)  # [n, C, H, D]
    result = query.new_zeros(batch * length, heads, dim)
    result = result.index_put((plan.gather[plan.valid],), chunk_out[plan.valid])
    return result.view(batch, length, heads, dim), None


def register() -> None:
    """Make ``attn_implementation: mmpt_chunked`` known to transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, chunked_attention)
