"""The ``model`` section of a run config."""

from __future__ import annotations

from typing import Annotated

from mmpretrain.config import ComponentConfig, ConfigModel, FromRegistry


class ModelConfig(ConfigModel):
    """What to build: the decoder LLM (encoders and connectors join it in later issues)."""

    llm: Annotated[ComponentConfig, FromRegistry("llms")]
    """The decoder LLM; `name` picks the architecture (`mmpt list llms`)."""
