"""``mlp``: LLaVA's two-layer GELU projector (LlavaMultiModalProjector)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from mmpretrain.connectors.base import Connector, ConnectorConfig
from mmpretrain.connectors.linear import check_n_in, init_linear_weights
from mmpretrain.registry import CONNECTORS


class MLPConnectorConfig(ConnectorConfig):
    """LLaVA's per-token projector: Linear, GELU, Linear; keeps the length."""

    name: Literal["mlp"]
    hidden_dim: int | None = Field(None, gt=0)
    """Width after the first Linear (None = the LLM hidden size, as in LLaVA; any other
    value cannot be exported to transformers' Llava)."""
    bias: bool = True
    """Biases on both Linears (Llava's `multimodal_projector_bias`, true by default)."""

    def num_tokens(self, n_in: int) -> int:
        """One output token per input token."""
        check_n_in(n_in, self.name)
        return n_in


class MLPConnector(Connector):
    """Parameter names ``linear_1``/``linear_2`` equal LlavaMultiModalProjector's, so its
    state dict loads there with ``strict=True``.

    Per token: outputs at positions >= lengths are the projection of the padding, which
    the caller drops; valid outputs never depend on it.
    """

    config: MLPConnectorConfig

    def __init__(self, config: MLPConnectorConfig, in_dim: int, out_dim: int) -> None:
        super().__init__(config, in_dim, out_dim)
        hidden_dim = config.hidden_dim or out_dim
        self.linear_1 = nn.Linear(in_dim, hidden_dim, bias=config.bias)
        self.act = nn.GELU()  # exact erf GELU, transformers' ACT2FN["gelu"]
        self.linear_2 = nn.Linear(hidden_dim, out_dim, bias=config.bias)
        init_linear_weights(self)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear_2(self.act(self.linear_1(features))), lengths


CONNECTORS.add("mlp", MLPConnector, config=MLPConnectorConfig)
