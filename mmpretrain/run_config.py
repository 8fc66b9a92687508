"""The top-level run config that `mmpt train` reads: one section per concern."""

from __future__ import annotations

from pydantic import Field

from mmpretrain.config import ConfigModel
from mmpretrain.model.config import ModelConfig
from mmpretrain.train.config import DistributedConfig, OptimConfig, TrainConfig


class RunConfig(ConfigModel):
    """A whole training run. Sections are owned by the components that read them."""

    model: ModelConfig
    """What to build."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """Training loop settings."""
    optim: OptimConfig = Field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    """Multi-process settings."""
