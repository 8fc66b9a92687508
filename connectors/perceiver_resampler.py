"""``perceiver_resampler``: Flamingo's Perceiver Resampler.

``num_latents`` learned latents pass through ``depth`` blocks of cross-attention (queries:
the latents; keys/values: the media features *and* the latents, as in Flamingo) and a
feed-forward layer, so any number of input tokens becomes a constant ``num_latents``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mmpretrain.connectors.base import Connector, ConnectorConfig
from mmpretrain.connectors.linear import check_n_in, init_linear_weights
from mmpretrain.errors import ConfigError
from mmpretrain.registry import CONNECTORS


def valid_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """``[N, T]`` bool, True at positions ``< lengths`` (the key padding mask, True = attend)."""
    return torch.arange(t, device=lengths.device) < lengths[:, None]


def zero_padding(features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Padding replaced by zeros (``where``, not a product: padding may hold inf/NaN, which
    would otherwise reach valid outputs through masked attention's ``0 * NaN``)."""
    return torch.where(valid[..., None], features, features.new_zeros(()))


def check_heads(connector: str, dim: int, heads: int, in_dim: int) -> None:
    """The attention width must split evenly into heads."""
    if dim % heads:
        raise ConfigError(
            f"connector {connector!r}: width {dim} (hidden_dim, or the encoder width {in_dim} when "
            f"hidden_dim is unset) is not divisible by heads={heads}; set hidden_dim or heads"
        )


class MultiHeadAttention(nn.Module):
    """Queries ``[N, Lq, dim]`` attend to a context ``[N, Lk, kv_dim]`` (scaled dot product)."""

    def __init__(self, dim: int, kv_dim: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_kv = nn.Linear(kv_dim, 2 * dim, bias=bias)
        self.to_out = nn.Linear(dim, dim, bias=bias)

    def forward(
        self, queries: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``key_mask`` ``[N, Lk]`` bool, True = attend; every row needs one True."""
        n, lq, dim = queries.shape
        lk = context.shape[1]
        q = self.to_q(queries).reshape(n, lq, self.heads, -1).transpose(1, 2)
        k, v = self.to_kv(context).reshape(n, lk, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(out.transpose(1, 2).reshape(n, lq, dim))


class FeedForward(nn.Sequential):
    """Pre-norm feed-forward: LayerNorm, Linear (x ``mult``), GELU, Linear."""

    def __init__(self, dim: int, mult: int, bias: bool) -> None:
        super().__init__(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * mult, bias=bias),
            nn.GELU(),
            nn.Linear(dim * mult, dim, bias=bias),
        )


class PerceiverResamplerConfig(ConnectorConfig):
    """Flamingo's Perceiver Resampler: num_latents learned latents cross-attend to the features.

    The output length is the constant num_latents, whatever the input length.
    """

    name: Literal["perceiver_resampler"]
    num_latents: int = Field(64, gt=0)
    """Learned latents = output tokens per item (Flamingo: 64)."""
    depth: int = Field(6, gt=0)
    """Cross-attention + feed-forward blocks (Flamingo: 6)."""
    heads: int = Field(8, gt=0)
    """Attention heads; must divide the width."""
    hidden_dim: int | None = Field(None, gt=0)
    """Width the latents work at (None = the encoder width, as in Flamingo); the output
    is projected to the LLM hidden size."""
    ff_mult: int = Field(4, gt=0)
    """Feed-forward inner width as a multiple of the width."""

    def num_tokens(self, n_in: int) -> int:
        """``num_latents`` for any ``n_in >= 1``; 0 for an empty input (no media)."""
        check_n_in(n_in, self.name)
        return self.num_latents if n_in else 0


class PerceiverBlock(nn.Module):
    """Latents attend to (norm(features), norm(latents)); then a feed-forward; both residual."""

    def __init__(self, dim: int, heads: int, ff_mult: int) -> None:
        super().__init__()
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, dim, heads, bias=False)  # Flamingo: no biases
        self.ff = FeedForward(dim, ff_mult, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        normed = self.norm_latents(latents)
        context = torch.cat([self.norm_media(media), normed], dim=1)
        latents = latents + self.attn(normed, context, key_mask)
        return latents + self.ff(latents)


class PerceiverResamplerConnector(Connector):
    """``proj_in`` (only if hidden_dim differs from the encoder width), ``depth`` blocks,
    LayerNorm, ``proj_out`` to the LLM width.

    Padding keys are masked, so valid outputs never depend on padding; the latents are
    always attendable, so a row with length 0 stays finite (its lengths' is 0).
    """

    config: PerceiverResamplerConfig

    def __init__(self, config: PerceiverResamplerConfig, in_dim: int, out_dim: int) -> None:
        super().__init__(config, in_dim, out_dim)
        dim = config.hidden_dim or in_dim
        check_heads(config.name, dim, config.heads, in_dim)
        self.proj_in: nn.Module = nn.Linear(in_dim, dim) if dim != in_dim else nn.Identity()
        self.latents = nn.Parameter(torch.empty(config.num_latents, dim))
        self.blocks = nn.ModuleList(
            PerceiverBlock(dim, config.heads, config.ff_mult) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.proj_out = nn.Linear(dim, out_dim)
        init_linear_weights(self)
        nn.init.trunc_normal_(self.latents, std=0.02, a=-0.04, b=0.04)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, t, _ = features.shape
        valid = valid_mask(lengths, t)
        media = self.proj_in(zero_padding(features, valid))
        latents = self.latents.to(media.dtype).expand(n, -1, -1)
        key_mask = torch.cat([valid, valid.new_ones(n, self.config.num_latents)], dim=1)
        for block in self.blocks:
            latents = block(media, latents, key_mask)
        out_lengths = torch.where(lengths > 0, self.config.num_latents, 0).to(lengths.dtype)
        return self.proj_out(self.norm(latents)), out_lengths


CONNECTORS.add("perceiver_resampler", PerceiverResamplerConnector, config=PerceiverResamplerConfig)
