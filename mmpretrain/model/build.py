"""Build a MultimodalLM from the ``model`` config, and the weight-free media processors
the data pipeline needs to size media placeholders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.data.media_vocab import MediaVocabulary
from mmpretrain.kernels.apply import apply_kernels
from mmpretrain.model.config import ModelConfig
from mmpretrain.model.extend_vocab import resize_vocabulary, text_rows
from mmpretrain.model.multimodal import MultimodalLM
from mmpretrain.registry import CONNECTORS, ENCODERS, LLMS


def _trainable_flag(cfg: ModelConfig, part: str) -> bool:
    """Most specific of `part` (e.g. `encoders.vision`) and its group (`encoders`)."""
    if part in cfg.trainable:
        return cfg.trainable[part]
    return cfg.trainable.get(part.split(".", 1)[0], True)


def build_model(cfg: ModelConfig, vocab: MediaVocabulary | None = None) -> MultimodalLM:
    """Build the LLM, encoders and connectors, apply `trainable`, the kernel rules
    (`kernel_rows(model)` gives their table) and activation checkpointing. Random init
    unless a part names `pretrained` weights. With an early-fusion ``vocab`` the LLM has
    ``vocab.total_size`` token rows: set at random init, or a `pretrained` text LLM is
    resized (its text rows kept, the code rows at their mean)."""
    llm: Any = _build_llm(cfg, vocab)
    encoders = {name: ENCODERS.build(encoder_cfg) for name, encoder_cfg in sorted(cfg.encoders.items())}
    hidden = llm.get_input_embeddings().embedding_dim
    connectors = {}
    for modality, connector_cfg in sorted(cfg.connectors.items()):
        width = sum(e.out_dim for e in encoders.values() if e.modality == modality)
        builder = CONNECTORS.get(connector_cfg.name).builder
        connectors[modality] = builder(connector_cfg, in_dim=width, out_dim=hidden)
    model = MultimodalLM(llm, encoders, connectors)
    parts: list[tuple[str, nn.Module]] = [("llm", model.llm)]
    parts += [(f"encoders.{name}", module) for name, module in model.encoders.items()]
    parts += [(f"connectors.{modality}", module) for modality, module in model.connectors.items()]
    for part, module in parts:
        if not _trainable_flag(cfg, part):
            module.requires_grad_(False)
    if cfg.kernels:  # after freezing (the kinds reuse the Parameters), before checkpointing
        apply_kernels(model, cfg.kernels)
    if cfg.activation_checkpointing:
        _checkpoint_transformers_model(llm)
        for encoder in model.encoders.values():
            if any(p.requires_grad for p in encoder.parameters()):
                enable_encoder_checkpointing(encoder)
    return model


def _build_llm(cfg: ModelConfig, vocab: MediaVocabulary | None) -> Any:
    if vocab is None:
        return LLMS.build(cfg.llm)
    if getattr(cfg.llm, "pretrained", None) is None:
        return LLMS.build(cfg.llm.model_copy(update={"vocab_size": vocab.total_size}))
    llm = LLMS.build(cfg.llm)
    rows = llm.get_input_embeddings().num_embeddings
    resize_vocabulary(llm, text_rows(vocab.text_size, rows, vocab.total_size))
    return llm


def _checkpoint_transformers_model(model: Any) -> None:
    """transformers' activation checkpointing (the v5 name where it exists), non-reentrant."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def enable_encoder_checkpointing(encoder: nn.Module) -> bool:
    """Turn on the backbone's own activation checkpointing (transformers'
    ``gradient_checkpointing_enable``, timm's and open_clip's ``set_grad_checkpointing``);
    returns whether the encoder has such a switch."""
    for module in encoder.modules():
        if module is encoder:
            continue
        if hasattr(module, "gradient_checkpointing_enable") and getattr(
            module, "supports_gradient_checkpointing", False
        ):
            _checkpoint_transformers_model(module)
            return True
        if hasattr(module, "set_grad_checkpointing"):
            module.set_grad_checkpointing(True)  # type: ignore[operator]
            return True
    return False


def parameter_table(model: MultimodalLM) -> str:
    """Total and trainable parameters per part (printed at the start of a run)."""
    rows = [("llm", model.llm)]
    rows += [(f"encoders.{name}", module) for name, module in model.encoders.items()]
    rows += [(f"connectors.{modality}", module) for modality, module in model.connectors.items()]
    lines = [f"{'part':<28} {'parameters':>14} {'trainable':>14}"]
    total = trainable = 0
    for name, module in rows:
        count = sum(p.numel() for p in module.parameters())
        train = sum(p.numel() for p in module.parameters() if p.requires_grad)
        total, trainable = total + count, trainable + train
        lines.append(f"{name:<28} {count:>14,} {train:>14,}")
    lines.append(f"{'total':<28} {total:>14,} {trainable:>14,}")
    return "\n".join(lines)


@dataclass(frozen=True)
class ModelMediaProcessor:
    """A modality's preprocessing and LLM token count, from configs only (no weights):
    the first encoder's transform, and ``connector.num_tokens(encoder.num_tokens(item))``."""

    modality: str
    encoder: Any
    connector: Any

    def preprocess(self, segment: DecodedSegment) -> torch.Tensor:
        """The encoder's input tensor for one item."""
        return self.encoder.preprocess(segment)

    def num_tokens(self, inputs: torch.Tensor) -> int:
        """LLM positions the item takes."""
        return int(self.connector.num_tokens(self.encoder.num_tokens(inputs)))


def media_processors(cfg: ModelConfig) -> dict[str, ModelMediaProcessor]:
    """One processor per modality that has encoders (encoders of one modality share the
    first one's preprocessing, by name order)."""
    processors = {}
    for name, encoder_cfg in sorted(cfg.encoders.items()):
        modality = encoder_cfg.modality()  # type: ignore[attr-defined]
        if modality not in processors:
            connector_cfg = cfg.connectors.get(modality)
            if connector_cfg is None:
                from mmpretrain.errors import ConfigError

                raise ConfigError(
                    f"model.encoders.{name} reads {modality} but model.connectors.{modality} is missing"
                )
            processors[modality] = ModelMediaProcessor(modality, encoder_cfg.processor(), connector_cfg)  # type: ignore[attr-defined]
    return processors
