"""``qformer``: BLIP-2's Querying Transformer, as a connector.

``num_queries`` learned queries pass through ``depth`` blocks of self-attention over the
queries, cross-attention to the (LayerNormed) media features and a feed-forward layer, then
a LayerNorm and a Linear to the LLM width (BLIP-2's ``language_projection``). Blocks are
pre-norm (BLIP-2's BERT blocks are post-norm) for stable training from scratch.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from mmpretrain.connectors.base import Connector, ConnectorConfig
from mmpretrain.connectors.linear import check_n_in, init_linear_weights
from mmpretrain.connectors.perceiver_resampler import (
    FeedForward,
    MultiHeadAttention,
    check_heads,
    valid_mask,
    zero_padding,
)
from mmpretrain.registry import CONNECTORS


class QFormerConfig(ConnectorConfig):
    """BLIP-2's Q-Former: num_queries learned queries with self- and cross-attention blocks.

    The output length is the constant num_queries, whatever the input length.
    """

    name: Literal["qformer"]
    num_queries: int = Field(32, gt=0)
    """Learned queries = output tokens per item (BLIP-2: 32)."""
    depth: int = Field(6, gt=0)
    """Blocks of self-attention, cross-attention and feed-forward (BLIP-2: 12)."""
    heads: int = Field(8, gt=0)
    """Attention heads; must divide the width."""
    hidden_dim: int | None = Field(None, gt=0)
    """Width of the queries (None = the encoder width; BLIP-2: 768); cross-attention reads
    the encoder features directly, and the output is projected to the LLM hidden size."""
    ff_mult: int = Field(4, gt=0)
    """Feed-forward inner width as a multiple of the width."""

    def num_tokens(self, n_in: int) -> int:
        """``num_queries`` for any ``n_in >= 1``; 0 for an empty input (no media)."""
        check_n_in(n_in, self.name)
        return self.num_queries if n_in else 0


class QFormerBlock(nn.Module):
    """Pre-norm: queries self-attend, cross-attend to the features, feed-forward."""

    def __init__(self, dim: int, kv_dim: int, heads: int, ff_mult: int) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, dim, heads, bias=True)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attn = MultiHeadAttention(dim, kv_dim, heads, bias=True)
        self.ff = FeedForward(dim, ff_mult, bias=True)

    def forward(self, queries: torch.Tensor, media: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        normed = self.norm_self(queries)
        queries = queries + self.self_attn(normed, normed)
        queries = queries + self.cross_attn(self.norm_cross(queries), media, key_mask)
        return queries + self.ff(queries)


class QFormerConnector(Connector):
    """``norm_media`` (BLIP-2's ln_vision), ``depth`` blocks, ``norm``, ``proj`` to the LLM width.

    Padding keys are masked, so valid outputs never depend on padding. A row with length 0
    lets its queries see its first (zeroed) position so the output stays finite; its
    lengths' is 0.
    """

    config: QFormerConfig

    def __init__(self, config: QFormerConfig, in_dim: int, out_dim: int) -> None:
        super().__init__(config, in_dim, out_dim)
        dim = config.hidden_dim or in_dim
        check_heads(config.name, dim, config.heads, in_dim)
        self.queries = nn.Parameter(torch.empty(config.num_queries, dim))
        self.norm_media = nn.LayerNorm(in_dim)
        self.blocks = nn.ModuleList(
            QFormerBlock(dim, in_dim, config.heads, config.ff_mult) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, out_dim)
        init_linear_weights(self)
        nn.init.trunc_normal_(self.queries, std=0.02, a=-0.04, b=0.04)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, t, d = features.shape
        if t == 0:  # no media in the whole batch: one zero key keeps attention defined
            features, t = features.new_zeros(n, 1, d), 1
        valid = valid_mask(lengths, t)
        media = self.norm_media(zero_padding(features, valid))
        key_mask = valid.clone()
        key_mask[:, 0] |= lengths == 0  # an all-masked row would give NaN
        queries = self.queries.to(media.dtype).expand(n, -1, -1)
        for block in self.blocks:
            queries = block(queries, media, key_mask)
        out_lengths = torch.where(lengths > 0, self.config.num_queries, 0).to(lengths.dtype)
        return self.proj(self.norm(queries)), out_lengths


CONNECTORS.add("qformer", QFormerConnector, config=QFormerConfig)
