"""``conv_pool``: a C-Abstractor-like convolutional resampler (Honeybee).

The valid tokens of each item form a row-major square grid of ``side x side`` tokens.
ResNet blocks at ``hidden_dim`` channels, an adaptive average pool to
``output_grid x output_grid``, more ResNet blocks, then an MLP readout to the LLM width:
any square grid becomes ``output_grid^2`` tokens while keeping local spatial structure.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from mmpretrain.connectors.base import Connector, ConnectorConfig
from mmpretrain.connectors.linear import check_n_in, init_linear_weights
from mmpretrain.connectors.pixel_shuffle import rows_by_length, square_grid_side
from mmpretrain.errors import ConfigError
from mmpretrain.registry import CONNECTORS


class ConvPoolConnectorConfig(ConnectorConfig):
    """C-Abstractor-like convolutional resampler (Honeybee): any square grid -> output_grid^2 tokens.

    ResNet blocks, adaptive average pool to output_grid x output_grid, ResNet blocks, MLP.
    """

    name: Literal["conv_pool"]
    output_grid: int = Field(12, gt=0)
    """Side of the pooled grid; output tokens = output_grid^2 (Honeybee: 12 -> 144)."""
    depth: int = Field(3, gt=0)
    """ResNet blocks before and (again) after the pooling (Honeybee: 3)."""
    hidden_dim: int | None = Field(None, gt=0)
    """Channels of the convolutional stages (None = the encoder width)."""

    def num_tokens(self, n_in: int) -> int:
        """``output_grid^2`` for any square ``n_in >= 1``; 0 for an empty input (no media)."""
        check_n_in(n_in, self.name)
        if n_in == 0:
            return 0
        square_grid_side(n_in, 1, self.name)
        return self.output_grid**2


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of ``[N, C, H, W]`` (batch- and padding-independent,
    unlike BatchNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    """ResNet basic block: (3x3 conv, LayerNorm2d, SiLU) x 2 with a (1x1 conv) shortcut."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.norm1 = LayerNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = LayerNorm2d(out_ch)
        self.act = nn.SiLU()
        self.shortcut: nn.Module = nn.Identity()
        if in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(y)) + self.shortcut(x))


class ConvPoolConnector(Connector):
    """Items with different grid sizes are convolved and pooled one size at a time (only
    their valid tokens), so valid outputs never depend on padding. A row with length 0
    gets the readout of an all-zero grid (finite; its lengths' is 0)."""

    config: ConvPoolConnectorConfig

    def __init__(self, config: ConvPoolConnectorConfig, in_dim: int, out_dim: int) -> None:
        super().__init__(config, in_dim, out_dim)
        dim = config.hidden_dim or in_dim
        self.hidden_dim = dim
        self.stage1 = nn.Sequential(*(ResBlock(in_dim if i == 0 else dim, dim) for i in range(config.depth)))
        self.pool = nn.AdaptiveAvgPool2d(config.output_grid)
        self.stage2 = nn.Sequential(*(ResBlock(dim, dim) for _ in range(config.depth)))
        self.readout = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        init_linear_weights(self)

    def _grid_pool(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, side^2, D] -> [B, hidden, g, g]``."""
        b, seq, d = features.shape
        side = math.isqrt(seq)
        grid = features.transpose(1, 2).reshape(b, d, side, side)
        return self.pool(self.stage1(grid))

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, t, _ = features.shape
        g = self.config.output_grid
        groups = rows_by_length(lengths)
        for length, _ in groups:
            self.config.num_tokens(length)  # each row's valid tokens must be a square grid
        if groups and groups[-1][0] > t:
            raise ConfigError(f"connector 'conv_pool': a length {groups[-1][0]} exceeds T={t}")
        if len(groups) == 1 and groups[0][0] == t and t > 0:
            pooled = self._grid_pool(features)
        else:
            pooled = features.new_zeros(n, self.hidden_dim, g, g)
            for length, rows in groups:
                if length:
                    pooled[rows] = self._grid_pool(features[rows, :length]).to(pooled.dtype)
        tokens = self.stage2(pooled).flatten(2).transpose(1, 2)  # [N, g*g, hidden], row-major
        out_lengths = torch.where(lengths > 0, g * g, 0).to(lengths.dtype)
        return self.readout(tokens), out_lengths


CONNECTORS.add("conv_pool", ConvPoolConnector, config=ConvPoolConnectorConfig)
