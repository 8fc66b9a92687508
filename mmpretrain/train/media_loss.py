"""Early fusion's loss split: the loss on media code tokens and on text, per step.

The training loss stays one sum over every label token; this meter recomputes, without
gradients, the cross-entropy at the label positions whose target is a media code (a
small subset) and derives the text part from the step's total, so the logged
``loss_media_codes`` and ``loss_text`` cost little and leave the loss itself untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmpretrain.data.media_vocab import MediaVocabulary
from mmpretrain.data.types import IGNORE_INDEX


class MediaLossMeter:
    """Sums of the current step's loss on code targets and on text targets."""

    def __init__(self, vocab: MediaVocabulary) -> None:
        self.vocab = vocab
        self.step = -1
        self.code_sum = self.code_count = self.total_sum = self.total_count = 0.0

    @torch.no_grad()
    def add(self, step: int, logits: torch.Tensor, labels: torch.Tensor, loss_sum: torch.Tensor) -> None:
        """Count one micro-batch of optimizer step ``step`` (a new step starts new sums);
        ``loss_sum`` is its summed token loss from the training loss."""
        if step != self.step:
            self.step = step
            self.code_sum = self.code_count = self.total_sum = self.total_count = 0.0
        targets = torch.full_like(labels, IGNORE_INDEX)
        targets[:, :-1] = labels[:, 1:]  # position i predicts label i + 1, as the training loss
        codes = self.vocab.code_mask(targets)
        if codes.any():
            picked = logits[codes].float()
            self.code_sum += float(F.cross_entropy(picked, targets[codes], reduction="sum"))
            self.code_count += int(codes.sum())
        self.total_sum += float(loss_sum.detach())
        self.total_count += int((targets != IGNORE_INDEX).sum())

    def metrics(self) -> dict[str, float]:
        """``loss_media_codes`` and ``loss_text`` of the current step (a key is left out
        when the step had no such targets)."""
        text_count = self.total_count - self.code_count
        out = {}
        if self.code_count:
            out["loss_media_codes"] = self.code_sum / self.code_count
        if text_count:
            out["loss_text"] = (self.total_sum - self.code_sum) / text_count
        return out
