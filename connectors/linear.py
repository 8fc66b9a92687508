"""``linear``: one Linear per token (Qwen2-Audio's ``multi_modal_projector``)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from mmpretrain.connectors.base import Connector, ConnectorConfig
from mmpretrain.errors import ConfigError
from mmpretrain.registry import CONNECTORS


def check_n_in(n_in: int, name: str) -> None:
    """Reject a negative input length (every connector maps 0 input tokens to 0)."""
    if n_in < 0:
        raise ConfigError(f"connector {name!r}: input length must be >= 0, got {n_in}")


def init_linear_weights(module: nn.Module, std: float = 0.02) -> None:
    """Deterministic (under ``torch.manual_seed``) init: Linear/Conv weights ~ N(0, std)
    truncated at 2 std, biases zero, LayerNorm to identity."""
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(sub.weight, std=std, a=-2 * std, b=2 * std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm) and sub.elementwise_affine:
            nn.init.ones_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)


class LinearConnectorConfig(ConnectorConfig):
    """One Linear per token, D_in -> D_llm (Qwen2-Audio's projector); keeps the length."""

    name: Literal["linear"]
    bias: bool = True
    """Add a bias (Qwen2-Audio's projector has one)."""

    def num_tokens(self, n_in: int) -> int:
        """One output token per input token."""
        check_n_in(n_in, self.name)
        return n_in


class LinearConnector(Connector):
    """``linear.weight``/``linear.bias`` match Qwen2AudioMultiModalProjector's names.

    Per token: outputs at positions >= lengths are the projection of the padding, which
    the caller drops; valid outputs never depend on it.
    """

    config: LinearConnectorConfig

    def __init__(self, config: LinearConnectorConfig, in_dim: int, out_dim: int) -> None:
        super().__init__(config, in_dim, out_dim)
        self.linear = nn.Linear(in_dim, out_dim, bias=config.bias)
        init_linear_weights(self)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear(features), lengths


CONNECTORS.add("linear", LinearConnector, config=LinearConnectorConfig)
