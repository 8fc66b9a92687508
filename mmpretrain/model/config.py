"""The ``model`` section of a run config."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from mmpretrain.config import ComponentConfig, ConfigModel, FromRegistry
from mmpretrain.kernels.rules import KernelRule


class ModelConfig(ConfigModel):
    """What to build: a decoder LLM, optionally with media encoders and connectors."""

    llm: Annotated[ComponentConfig, FromRegistry("llms")]
    """The decoder LLM; `name` picks the architecture (`mmpt list llms`)."""
    encoders: dict[str, Annotated[ComponentConfig, FromRegistry("encoders")]] = Field(default_factory=dict)
    """Media encoders by a name of your choice (`mmpt list encoders`); several encoders of
    one modality are concatenated along the feature dimension."""
    connectors: dict[str, Annotated[ComponentConfig, FromRegistry("connectors")]] = Field(
        default_factory=dict
    )
    """One connector per modality (`image`, `audio`) projecting encoder features to the
    LLM width (`mmpt list connectors`)."""
    trainable: dict[str, bool] = Field(default_factory=dict)
    """What trains: keys `llm`, `encoders`, `encoders.NAME`, `connectors`,
    `connectors.MODALITY` (the most specific key wins; default: everything trains).
    Frozen parts get no optimizer state and run under no_grad."""
    activation_checkpointing: bool = False
    """Recompute LLM (and trainable encoder) activations in the backward pass to save memory."""
    media_tokenizers: dict[str, Annotated[ComponentConfig, FromRegistry("tokenizers")]] = Field(
        default_factory=dict
    )
    """Early fusion: a discrete media tokenizer per modality (`image: {name: vq, path: DIR}`,
    `audio: {name: speech_units, path: DIR}`) whose codes join the LLM vocabulary as text-like
    tokens; a modality uses either this or an encoder + connector."""
    kernels: list[KernelRule] = Field(default_factory=list)
    """Sparse / low-precision Linear kinds by module-name rules, first match wins:
    `[{match: "llm.*.mlp.*", kind: sparse24, ...}]` (`mmpt list kernels`; README "Kernels").
    lm_head and embeddings stay dense by default."""

    @model_validator(mode="after")
    def _check_parts(self) -> ModelConfig:
        allowed = {"llm", "encoders", "connectors"}
        allowed |= {f"encoders.{name}" for name in self.encoders}
        allowed |= {f"connectors.{modality}" for modality in self.connectors}
        unknown = sorted(set(self.trainable) - allowed)
        if unknown:
            raise ValueError(f"trainable has unknown parts {unknown}; allowed: {', '.join(sorted(allowed))}")
        bad = sorted(set(self.connectors) - {"image", "audio"})
        if bad:
            raise ValueError(f"connectors are keyed by modality (image, audio), not {bad}")
        _check_media_tokenizers(self)
        return self


def _check_media_tokenizers(cfg: ModelConfig) -> None:
    """Media tokenizers are keyed by modality, are not text tokenizers, and take a modality
    that no encoder + connector serves."""
    from mmpretrain.data.tokenizer import BpeTokenizerConfig

    bad = sorted(set(cfg.media_tokenizers) - {"image", "audio"})
    if bad:
        raise ValueError(f"media_tokenizers are keyed by modality (image, audio), not {bad}")
    for modality, tokenizer in sorted(cfg.media_tokenizers.items()):
        if isinstance(tokenizer, BpeTokenizerConfig):
            raise ValueError(
                f"media_tokenizers.{modality}: bpe is a text tokenizer (set it as data.tokenizer); "
                "use a media tokenizer: vq (images) or speech_units (audio)"
            )
        encoders = sorted(n for n, e in cfg.encoders.items() if e.modality() == modality)  # type: ignore[attr-defined]
        if encoders or modality in cfg.connectors:
            where = f"model.encoders.{encoders[0]}" if encoders else f"model.connectors.{modality}"
            raise ValueError(
                f"{modality} has both a media tokenizer (media_tokenizers.{modality}) and {where}: "
                "use either early fusion or an encoder + connector per modality"
            )
