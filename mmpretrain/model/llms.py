"""Decoder LLM builders: transformers causal LMs by registry name.

Each name builds its transformers model from our config with random init, or loads it
from ``pretrained`` (a local directory; a hub id works where the hub is reachable).
``trust_remote_code`` stays off unless the config turns it on. transformers is imported
inside the builders so that loading the registry stays cheap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from mmpretrain.config import ComponentConfig
from mmpretrain.errors import ConfigError, UserError
from mmpretrain.registry import LLMS

if TYPE_CHECKING:
    from transformers import PreTrainedModel

DTYPES = Literal["float32", "bfloat16", "float16"]


class CausalLMConfig(ComponentConfig):
    """Shared fields of every transformers causal LM builder."""

    pretrained: str | None = None
    """Local model directory (or hub id, where reachable) to load instead of random init;
    the architecture fields below are then taken from its config.json."""
    trust_remote_code: bool = False
    """Allow custom model code from `pretrained` to run (off: it executes downloaded code)."""
    vocab_size: int = Field(32000, gt=0)
    """Vocabulary size (random init only)."""
    hidden_size: int = Field(256, gt=0)
    """Model width."""
    intermediate_size: int = Field(688, gt=0)
    """MLP inner width."""
    num_layers: int = Field(4, gt=0)
    """Number of decoder blocks."""
    num_heads: int = Field(4, gt=0)
    """Attention heads."""
    num_kv_heads: int | None = Field(None, gt=0)
    """Key/value heads for grouped-query attention (default: num_heads)."""
    head_dim: int | None = Field(None, gt=0)
    """Per-head width (default: hidden_size / num_heads)."""
    max_position_embeddings: int = Field(2048, gt=0)
    """Longest sequence the rotary embedding is set up for."""
    rope_theta: float = Field(10000.0, gt=0)
    """Rotary embedding base."""
    tie_word_embeddings: bool = False
    """Share the input embedding and the LM head."""
    initializer_range: float = Field(0.02, gt=0)
    """Std of the normal init of weights."""
    rms_norm_eps: float = Field(1e-6, gt=0)
    """Epsilon of the RMSNorm layers (Llama-2/Vicuna, SmolLM2 and Qwen2-Audio use 1e-5)."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "mmpt_chunked"] = "sdpa"
    """Attention kernel; packed training passes an explicit block mask to sdpa/eager;
    `mmpt_chunked` computes scores only inside chunks of whole documents (for many short
    documents per packed row; equal outputs at every document position)."""
    attn_chunk_size: int = Field(256, gt=0)
    """mmpt_chunked: positions per chunk (a longer document gets a chunk of its own length)."""
    dtype: DTYPES = "float32"
    """Parameter dtype at build (autocast is a training option)."""

    @model_validator(mode="after")
    def _check_heads(self) -> CausalLMConfig:
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        kv_heads = self.num_kv_heads or self.num_heads
        if self.num_heads % kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {kv_heads}")
        return self

    def hf_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the transformers config class (random init)."""
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads or self.num_heads,
            "head_dim": self.head_dim or self.hidden_size // self.num_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "rms_norm_eps": self.rms_norm_eps,
            "use_cache": False,  # training default; generation turns the cache on explicitly
        }


class LlamaLMConfig(CausalLMConfig):
    """Llama-architecture decoder (transformers LlamaForCausalLM)."""

    name: Literal["llama"]


class Qwen2LMConfig(CausalLMConfig):
    """Qwen2-architecture decoder (transformers Qwen2ForCausalLM; q/k/v biases)."""

    name: Literal["qwen2"]


class Qwen3LMConfig(CausalLMConfig):
    """Qwen3-architecture decoder (transformers Qwen3ForCausalLM; q/k RMSNorm)."""

    name: Literal["qwen3"]


class MistralLMConfig(CausalLMConfig):
    """Mistral-architecture decoder (transformers MistralForCausalLM)."""

    name: Literal["mistral"]
    sliding_window: int | None = Field(None, gt=0)
    """Sliding attention window in tokens (None = full attention)."""


class GemmaLMConfig(CausalLMConfig):
    """Gemma-architecture decoder (transformers GemmaForCausalLM; tied embeddings)."""

    name: Literal["gemma"]
    tie_word_embeddings: bool = True
    """Gemma ties the input embedding and the LM head."""


# transformers config class and model_type for each registry name
_HF_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama": ("LlamaConfig", "llama"),
    "qwen2": ("Qwen2Config", "qwen2"),
    "qwen3": ("Qwen3Config", "qwen3"),
    "mistral": ("MistralConfig", "mistral"),
    "gemma": ("GemmaConfig", "gemma"),
}


def build_causal_lm(cfg: CausalLMConfig) -> PreTrainedModel:
    """Build the transformers causal LM described by ``cfg`` (random init or pretrained)."""
    import torch
    import transformers

    dtype = getattr(torch, cfg.dtype)
    if cfg.attn_implementation == "mmpt_chunked":
        from mmpretrain.model.chunked_attention import register

        register()
    if cfg.pretrained is not None:
        model = load_pretrained_causal_lm(cfg, dtype)
        model.config.mmpt_attn_chunk = cfg.attn_chunk_size
        return model
    config_class_name, _ = _HF_ARCHITECTURES[cfg.name]
    kwargs = cfg.hf_kwargs()
    if isinstance(cfg, MistralLMConfig):
        kwargs["sliding_window"] = cfg.sliding_window
    hf_config = getattr(transformers, config_class_name)(**kwargs)
    model = transformers.AutoModelForCausalLM.from_config(
        hf_config, attn_implementation=cfg.attn_implementation, dtype=dtype
    )
    model.config.mmpt_attn_chunk = cfg.attn_chunk_size
    return model


def load_pretrained_causal_lm(cfg: CausalLMConfig, dtype: Any) -> PreTrainedModel:
    """Load ``cfg.pretrained``; a local directory must hold the architecture ``cfg.name``."""
    import transformers

    assert cfg.pretrained is not None
    source = Path(cfg.pretrained).expanduser()
    if source.is_dir():
        _check_model_type(source, cfg.name)
    elif source.exists() or cfg.pretrained.startswith((".", "/", "~")):
        raise ConfigError(f"model.llm.pretrained: {cfg.pretrained} is not a model directory")
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(
            str(source) if source.is_dir() else cfg.pretrained,
            trust_remote_code=cfg.trust_remote_code,
            attn_implementation=cfg.attn_implementation,
            dtype=dtype,
        )
    except OSError as exc:
        raise UserError(
            f"cannot load LLM {cfg.pretrained!r}: {exc}. Use a local directory with "
            "config.json and weights (the hub is unreachable or HF_HUB_OFFLINE=1 is set)"
        ) from exc
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise UserError(
                f"LLM {cfg.pretrained!r} needs custom code; set model.llm.trust_remote_code: true "
                "only if you trust it"
            ) from exc
        raise


def _check_model_type(directory: Path, name: str) -> None:
    config_file = directory / "config.json"
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.llm.pretrained: cannot read {config_file}: {exc}") from exc
    expected = _HF_ARCHITECTURES[name][1]
    if model_type != expected:
        raise ConfigError(
            f"model.llm.pretrained: {directory} holds a {model_type!r} model but model.llm.name is "
            f"{name!r}; set model.llm.name to the matching architecture"
        )


for _name, _config_class in (
    ("llama", LlamaLMConfig),
    ("qwen2", Qwen2LMConfig),
    ("qwen3", Qwen3LMConfig),
    ("mistral", MistralLMConfig),
    ("gemma", GemmaLMConfig),
):
    LLMS.add(_name, build_causal_lm, config=_config_class)
