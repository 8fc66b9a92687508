"""``frame_stack_mlp``: stack ``k`` consecutive speech frames into one token, then an MLP
(the frame-stacking downsampler of SALMONN-style / LLaMA-Omni speech adaptors)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mmpretrain.connectors.base import Connector, ConnectorConfig
from mmpretrain.connectors.linear import check_n_in, init_linear_weights
from mmpretrain.registry import CONNECTORS


class FrameStackMLPConnectorConfig(ConnectorConfig):
    """Concatenate k consecutive frames (D_in * k), then Linear, GELU, Linear: n -> ceil(n / k)."""

    name: Literal["frame_stack_mlp"]
    k: int = Field(5, ge=1)
    """Frames stacked into one token (e.g. 5 turns 50 Hz Whisper frames into 10 Hz)."""
    hidden_dim: int | None = Field(None, gt=0)
    """Width after the first Linear (None = the LLM hidden size)."""

    def num_tokens(self, n_in: int) -> int:
        """``ceil(n_in / k)``: a last partial group is zero-padded and counts as one token."""
        check_n_in(n_in, self.name)
        return -(-n_in // self.k)


class FrameStackMLPConnector(Connector):
    """Frames at positions >= lengths are replaced by zeros before stacking, so the last
    partial group of each row is zero-padded and valid outputs never depend on padding.
    Outputs past ``lengths'`` are the MLP of stacked padding.
    """

    config: FrameStackMLPConnectorConfig

    def __init__(self, config: FrameStackMLPConnectorConfig, in_dim: int, out_dim: int) -> None:
        super().__init__(config, in_dim, out_dim)
        hidden_dim = config.hidden_dim or out_dim
        self.linear_1 = nn.Linear(in_dim * config.k, hidden_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden_dim, out_dim)
        init_linear_weights(self)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, t, d = features.shape
        k = self.config.k
        valid = torch.arange(t, device=features.device) < lengths[:, None]
        # where, not multiply: padding may hold inf/NaN
        features = torch.where(valid[..., None], features, features.new_zeros(()))
        t_out = -(-t // k)
        features = F.pad(features, (0, 0, 0, t_out * k - t))
        stacked = features.reshape(n, t_out, k * d)
        out_lengths = torch.div(lengths + k - 1, k, rounding_mode="floor")
        return self.linear_2(self.act(self.linear_1(stacked))), out_lengths


CONNECTORS.add("frame_stack_mlp", FrameStackMLPConnector, config=FrameStackMLPConnectorConfig)
