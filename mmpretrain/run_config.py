"""The top-level run config that `mmpt train` reads: one section per concern."""

from __future__ import annotations

from mmpretrain.config import ConfigModel
from mmpretrain.data.data_config import DataConfig
from mmpretrain.model.config import ModelConfig
from mmpretrain.train.config import DistributedConfig, OptimConfig, TrainConfig


class RunConfig(ConfigModel):
    """A whole training run. Sections are owned by the components that read them."""

    model: ModelConfig
    """What to build."""
    data: DataConfig | None = None
    """Training data (required by `mmpt train`; model-only configs leave it out)."""
    train: TrainConfig = TrainConfig()
    """Training loop settings."""
    optim: OptimConfig = OptimConfig()
    """Optimizer and schedule."""
    distributed: DistributedConfig = DistributedConfig()
    """Multi-process settings."""
