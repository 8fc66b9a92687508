"""``pixel_shuffle_mlp``: space-to-depth token reduction, then a projection (Idefics3,
SmolVLM, nanoVLM).

Input tokens are a row-major square grid (a ViT's patches). Each ``s x s`` block of
neighbours (``s = scale_factor``) is concatenated into one token of width ``D_in * s^2``
(in transformers' ``Idefics3Connector.pixel_shuffle`` order: block row major, then block
column, then channel), then projected to the LLM width: ``n`` tokens become ``n / s^2``.

Tiled images (Idefics3/SmolVLM image splitting) set ``tokens_per_tile``: the sequence is
then ``tiles * tokens_per_tile`` tokens, each tile its own grid, shuffled independently.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from mmpretrain.connectors.base import Connector, ConnectorConfig
from mmpretrain.connectors.linear import check_n_in, init_linear_weights
from mmpretrain.errors import ConfigError
from mmpretrain.registry import CONNECTORS


def square_grid_side(n: int, divisor: int, connector: str, what: str = "input tokens") -> int:
    """Side of the square grid of ``n`` tokens; the side must be divisible by ``divisor``."""
    side = math.isqrt(n)
    if side * side != n or side % divisor:
        valid = ", ".join(str((divisor * k) ** 2) for k in range(1, 5))
        raise ConfigError(
            f"connector {connector!r}: {n} {what} do not form a square grid whose side is divisible "
            f"by {divisor} (n must be a perfect square divisible by {divisor * divisor}, e.g. {valid}); "
            "use an encoder and image size that give such a grid, or change the connector's scale"
        )
    return side


def rows_by_length(lengths: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """``(length, row indices)`` for each distinct length in ``lengths`` (one host sync)."""
    values = [int(v) for v in lengths.tolist()]
    groups: dict[int, list[int]] = {}
    for row, value in enumerate(values):
        groups.setdefault(value, []).append(row)
    return [(value, torch.tensor(rows, device=lengths.device)) for value, rows in sorted(groups.items())]


def pixel_shuffle(x: torch.Tensor, scale_factor: int) -> torch.Tensor:
    """``[B, side^2, D] -> [B, side^2 / s^2, D * s^2]``, grouping each ``s x s`` block.

    Same element order as transformers' Idefics3Connector.pixel_shuffle (and nanoVLM's).
    """
    batch, seq, dim = x.shape
    side, s = math.isqrt(seq), scale_factor
    # (block row, row in block, block column, column in block) -> blocks first
    x = x.reshape(batch, side // s, s, side // s, s, dim)
    x = x.permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, seq // (s * s), dim * s * s)


class PixelShuffleMLPConnectorConfig(ConnectorConfig):
    """Pixel shuffle (n -> n / scale_factor^2 tokens), then Linear (or an MLP); Idefics3/nanoVLM."""

    name: Literal["pixel_shuffle_mlp"]
    scale_factor: int = Field(2, ge=1)
    """Side of the square block of neighbouring tokens merged into one (Idefics3: 2,
    SmolVLM: 3 or 4, nanoVLM: 4)."""
    hidden_layers: int = Field(0, ge=0)
    """Linear+GELU layers before the output Linear. 0 with `bias: false` is exactly
    Idefics3's `modality_projection.proj` (and nanoVLM's projector)."""
    hidden_dim: int | None = Field(None, gt=0)
    """Width of the hidden layers (None = the LLM hidden size); only with hidden_layers >= 1."""
    bias: bool = False
    """Biases on the Linears (Idefics3 and nanoVLM have none)."""
    tokens_per_tile: int | None = Field(None, gt=0)
    """Tokens of one image tile (a square grid). None: the whole valid sequence is one
    grid. Set: sequences are `tiles * tokens_per_tile` tokens, each tile shuffled on its
    own, and lengths must be whole numbers of tiles."""

    @model_validator(mode="after")
    def _check(self) -> PixelShuffleMLPConnectorConfig:
        if self.hidden_dim is not None and self.hidden_layers == 0:
            raise ValueError(
                "hidden_dim is only used with hidden_layers >= 1: remove it or set hidden_layers"
            )
        if self.tokens_per_tile is not None:
            try:
                square_grid_side(self.tokens_per_tile, self.scale_factor, self.name, "tokens_per_tile")
            except ConfigError as exc:
                raise ValueError(str(exc)) from exc
        return self

    def num_tokens(self, n_in: int) -> int:
        """``n_in / scale_factor^2``; ``n_in`` must be a square grid (or whole tiles)."""
        check_n_in(n_in, self.name)
        s2 = self.scale_factor**2
        if self.tokens_per_tile is None:
            square_grid_side(n_in, self.scale_factor, self.name)
        elif n_in % self.tokens_per_tile:
            raise ConfigError(
                f"connector {self.name!r}: {n_in} input tokens are not a whole number of tiles of "
                f"tokens_per_tile={self.tokens_per_tile}; set it to the encoder's tokens per tile"
            )
        return n_in // s2


class PixelShuffleProjection(nn.Module):
    """``hidden_layers`` x (Linear, GELU), then ``proj``; with none, only ``proj`` (Idefics3SimpleMLP)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_layers: int, hidden_dim: int, bias: bool) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * hidden_layers
        self.hidden = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in itertools.pairwise(dims))
        self.act = nn.GELU()
        self.proj = nn.Linear(dims[-1], out_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = self.act(layer(x))
        return self.proj(x)


class PixelShuffleMLPConnector(Connector):
    """With ``hidden_layers: 0, bias: false`` the state dict (``modality_projection.proj.weight``)
    equals transformers' Idefics3Connector's and the outputs match.

    Outputs past ``lengths'`` are the projection of zeros (untiled, mixed lengths) or of
    shuffled padding tiles (tiled); valid outputs never depend on padding.
    """

    config: PixelShuffleMLPConnectorConfig

    def __init__(self, config: PixelShuffleMLPConnectorConfig, in_dim: int, out_dim: int) -> None:
        super().__init__(config, in_dim, out_dim)
        s2 = config.scale_factor**2
        self.modality_projection = PixelShuffleProjection(
            in_dim * s2, out_dim, config.hidden_layers, config.hidden_dim or out_dim, config.bias
        )
        init_linear_weights(self)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, t, d = features.shape
        s, s2 = self.config.scale_factor, self.config.scale_factor**2
        tile = self.config.tokens_per_tile
        if tile is not None:
            if t % tile:
                raise ConfigError(
                    f"connector 'pixel_shuffle_mlp': padded length {t} is not a multiple of "
                    f"tokens_per_tile={tile}; pad features to whole tiles"
                )
            bad = lengths.remainder(tile) != 0
            if bool(bad.any()):
                raise ConfigError(
                    f"connector 'pixel_shuffle_mlp': lengths {lengths[bad].tolist()} are not whole "
                    f"tiles of tokens_per_tile={tile}"
                )
            # tiles are independent grids: fold them into the batch
            tiles = features.reshape(n * (t // tile), tile, d)
            shuffled = pixel_shuffle(tiles, s).reshape(n, t // s2, d * s2)
        else:
            groups = rows_by_length(lengths)
            for length, _ in groups:
                self.config.num_tokens(length)  # each row's valid tokens must be a grid
            if groups and groups[-1][0] > t:
                raise ConfigError(f"connector 'pixel_shuffle_mlp': a length {groups[-1][0]} exceeds T={t}")
            if len(groups) == 1 and groups[0][0] == t:
                shuffled = pixel_shuffle(features, s)
            else:  # rows with different grid sizes: shuffle each size on its own
                t_out = max((length // s2 for length, _ in groups), default=0)
                shuffled = features.new_zeros(n, t_out, d * s2)
                for length, rows in groups:
                    if length:
                        shuffled[rows, : length // s2] = pixel_shuffle(features[rows, :length], s)
        return self.modality_projection(shuffled), lengths // s2


CONNECTORS.add("pixel_shuffle_mlp", PixelShuffleMLPConnector, config=PixelShuffleMLPConnectorConfig)
