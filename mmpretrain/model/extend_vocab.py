"""Resize a transformers causal LM's vocabulary for early fusion, keeping what it learned.

Rows that map to an id the model already had are copied; every other row of the input
embeddings and of the LM head (and its bias, if any) starts at the mean of the kept rows
(the usual choice when adding tokens: the new tokens' logits start at the average logit,
so the loss on old tokens does not jump). Tied embeddings stay tied.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def fill_rows(table: torch.Tensor, old: torch.Tensor, sources: Sequence[int | None]) -> None:
    """``table[i] = old[sources[i]]``, or the mean of the copied rows where ``sources[i]`` is
    None (a 2-D table of rows or a 1-D bias alike)."""
    kept = [(i, j) for i, j in enumerate(sources) if j is not None]
    new_rows, old_rows = zip(*kept, strict=True) if kept else ((), ())
    with torch.no_grad():
        old = old.to(table.dtype)
        if kept:
            table[list(new_rows)] = old[list(old_rows)]
            mean = old[list(old_rows)].float().mean(dim=0).to(table.dtype)
        else:
            mean = old.float().mean(dim=0).to(table.dtype)
        fresh = [i for i, j in enumerate(sources) if j is None]
        if fresh:
            table[fresh] = mean


def resize_vocabulary(llm: Any, sources: Sequence[int | None]) -> None:
    """Give ``llm`` ``len(sources)`` token rows: row ``i`` is the old row ``sources[i]``, or
    (None) the mean of the copied rows, in the input embeddings and the LM head alike."""
    input_old = llm.get_input_embeddings().weight.detach().clone()
    output = llm.get_output_embeddings()
    tied = output is not None and output.weight is llm.get_input_embeddings().weight
    output_old = None if output is None or tied else output.weight.detach().clone()
    bias_old = (
        None if output is None or getattr(output, "bias", None) is None else output.bias.detach().clone()
    )
    llm.resize_token_embeddings(len(sources), mean_resizing=False)
    fill_rows(llm.get_input_embeddings().weight, input_old, sources)
    output = llm.get_output_embeddings()
    if output_old is not None:
        fill_rows(output.weight, output_old, sources)
    if bias_old is not None:
        fill_rows(output.bias, bias_old, sources)


def text_rows(text_size: int, old_rows: int, new_size: int) -> list[int | None]:
    """Sources for a text-only LLM: ids below ``text_size`` (and below its table size) keep
    their rows, everything after them is new (the media code ranges)."""
    keep = min(text_size, old_rows)
    return [i if i < keep else None for i in range(new_size)]
