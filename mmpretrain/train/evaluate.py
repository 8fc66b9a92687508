"""Held-out loss: the same packed batches and loss as training, without gradients."""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch

from mmpretrain.data.data_config import DataConfig
from mmpretrain.data.text_pipeline import TextBatchStream
from mmpretrain.data.tokenizer import TextTokenizer
from mmpretrain.model.packed import token_loss_sum


@torch.no_grad()
def heldout_loss(
    model: Any,
    tokenizer: TextTokenizer,
    data: DataConfig,
    seq_len: int,
    batch_size: int = 8,
    max_batches: int = 20,
) -> tuple[float, int]:
    """Mean next-token loss (nats) over at most ``max_batches`` packed batches of ``data``
    (first epoch only), and the number of label tokens it covers."""
    was_training = model.training
    model.eval()
    stream = TextBatchStream(data, tokenizer, seq_len, batch_size, seed=0)
    total, count = 0.0, 0
    try:
        for batch, state in itertools.islice(stream.batches(), max_batches):
            if state.epoch > 0:
                break
            loss_sum, labels = token_loss_sum(model(batch), batch.labels)
            total += loss_sum.item()
            count += labels
    finally:
        model.train(was_training)
    return (total / count if count else math.nan), count
