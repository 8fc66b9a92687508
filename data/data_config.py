"""The ``data`` section of a run config: text sources or multimodal shards, tokenizer."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from mmpretrain.config import ComponentConfig, ConfigModel, FromRegistry
from mmpretrain.data.media_pipeline import MediaDataConfig
from mmpretrain.data.text_sources import TextSourceConfig
from mmpretrain.data.tokenizer import BpeTokenizerConfig


class DataConfig(ConfigModel):
    """Training data: text `sources` (packed text) or multimodal `shards`, and the tokenizer."""

    sources: list[TextSourceConfig] = Field(default_factory=list)
    """Text sources, read in order as one stream (format: text, jsonl, parquet, shards,
    shakespeare)."""
    shards: MediaDataConfig | None = None
    """Interleaved image-text-speech shards (reader, packing budgets, loss mask)."""
    tokenizer: Annotated[ComponentConfig, FromRegistry("tokenizers")] = BpeTokenizerConfig(name="bpe")
    """Tokenizer; a `bpe` tokenizer without `path` is trained on the data's text into the
    run directory at the first start of the run (vocab_size = learned vocabulary)."""
    buffer_docs: int = Field(2048, gt=0)
    """Text sources: documents packed together per round (larger: fuller packs)."""
    max_skips: int = Field(100, ge=0)
    """Text sources: bad records (invalid JSON, bad UTF-8, ...) skipped per epoch before
    the run stops (shards have their own error budget under shards.reader)."""

    @model_validator(mode="after")
    def _one_kind(self) -> DataConfig:
        if bool(self.sources) == (self.shards is not None):
            raise ValueError("set exactly one of data.sources (text) and data.shards (multimodal)")
        return self
