"""What every connector provides (DESIGN.md section 3): a projection from encoder
features to LLM embeddings with a known output length."""

from __future__ import annotations

import torch
from torch import nn

from mmpretrain.config import ComponentConfig


class ConnectorConfig(ComponentConfig):
    """Base of connector configs; subclasses add ``name: Literal[...]`` and their fields.

    ``num_tokens`` is a pure function of the config so the data pipeline can size media
    placeholders without building weights.
    """

    def num_tokens(self, n_in: int) -> int:
        """Output tokens for ``n_in`` input tokens."""
        raise NotImplementedError


class Connector(nn.Module):
    """``forward(features [N, T, D_in], lengths [N]) -> (embeds [N, T', D_llm], lengths' [N])``
    with ``lengths'[i] == num_tokens(lengths[i])``."""

    def __init__(self, config: ConnectorConfig, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.config = config
        self.in_dim = in_dim
        self.out_dim = out_dim

    def num_tokens(self, n_in: int) -> int:
        """See :meth:`ConnectorConfig.num_tokens`."""
        return self.config.num_tokens(n_in)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
