"""What every media encoder provides (DESIGN.md section 3).

An encoder is split in two so the data pipeline never needs weights:

- its **config** (a registered :class:`EncoderConfig`) builds a :class:`MediaProcessor`:
  ``preprocess(segment) -> tensor`` (the encoder owns its transform: resize, crop,
  normalise, feature extraction) and ``num_tokens(inputs) -> int`` (the encoder's output
  length for that item, computed from the config alone);
- the **module** (an :class:`Encoder`) maps a batch of preprocessed items to features
  ``[N, T, D]`` plus the valid length of each item.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import nn

from mmpretrain.config import ComponentConfig
from mmpretrain.data.decoders import DecodedSegment


class EncoderConfig(ComponentConfig):
    """Base of encoder configs; subclasses add ``name: Literal[...]`` and their fields."""

    pretrained: str | None = None
    """Local weights (file or directory; a hub id where reachable); None = random init."""

    def modality(self) -> Literal["image", "audio"]:
        """The media kind this encoder reads."""
        raise NotImplementedError

    def processor(self) -> EncoderProcessor:
        """Preprocessing and token counting, without weights."""
        raise NotImplementedError


class EncoderProcessor:
    """Preprocess one decoded media segment and count the encoder's output tokens."""

    modality: ClassVar[str] = "image"

    def preprocess(self, segment: DecodedSegment) -> torch.Tensor:
        """The encoder's input for one item (the pipeline stacks items of a batch; items
        may differ in one dimension, which is zero-padded, see ``MediaBatch.sizes``)."""
        raise NotImplementedError

    def num_tokens(self, inputs: torch.Tensor) -> int:
        """Encoder output length (tokens/frames) for one preprocessed item."""
        raise NotImplementedError


class Encoder(nn.Module):
    """A media encoder module: ``forward(inputs, sizes) -> (features [N, T, D], lengths [N])``.

    ``sizes`` is ``MediaBatch.sizes`` (valid length of each item along its padded
    dimension; empty when no item was padded). ``lengths[i]`` is the number of valid
    output tokens of item ``i`` (``T`` for all items when they are equal); it must equal
    ``processor.num_tokens(item)``.
    """

    modality: str
    out_dim: int

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.modality = config.modality()
        self.processor = config.processor()

    def preprocess(self, segment: DecodedSegment) -> torch.Tensor:
        """See :meth:`EncoderProcessor.preprocess`."""
        return self.processor.preprocess(segment)

    def num_tokens(self, inputs: torch.Tensor) -> int:
        """See :meth:`EncoderProcessor.num_tokens`."""
        return self.processor.num_tokens(inputs)

    def forward(self, inputs: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
