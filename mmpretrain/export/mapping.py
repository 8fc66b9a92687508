"""Which model configurations map to which transformers class (``mmpt export --to hf``),
and the message for those that do not.

A configuration maps when transformers has a class whose modules compute exactly what
ours do, so that our tensors load into it with ``strict=True`` and the logits agree:

==============================================================  ==================================
ours                                                            transformers
==============================================================  ==================================
text-only LLM (llama, qwen2, qwen3, mistral, gemma)             the LLM's ``*ForCausalLM``
``hf_clip``/``hf_siglip`` + ``mlp`` + LLM                       ``LlavaForConditionalGeneration``
``hf_siglip`` (last layer + ``final_norm``) +                   ``Idefics3ForConditionalGeneration``
``pixel_shuffle_mlp`` (``hidden_layers: 0, bias: false``) + LLM
``hf_qwen2_audio`` (last layer) + ``linear`` (bias) + LLM       ``Qwen2AudioForConditionalGeneration``
==============================================================  ==================================

Everything else (timm/open_clip/Whisper/wav2vec2 towers, resamplers, Q-Former, conv
pooling, frame stacking, several encoders of one modality, images and audio in one model,
any-resolution tiling, discrete media tokenizers, kernel kinds whose forward is not a plain
Linear) has no transformers class: :func:`plan_hf_export` raises one message listing every
such part and pointing to the native format (``--to safetensors``), which holds any model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from mmpretrain.errors import UserError
from mmpretrain.model.config import ModelConfig

CAUSAL_LM = "causal_lm"
LLAVA = "llava"
IDEFICS3 = "idefics3"
QWEN2_AUDIO = "qwen2_audio"

WEIGHT_ONLY_KINDS = frozenset({"sparse24", "unstructured"})
"""Kernel kinds whose forward is a Linear with their effective (masked) weight: they
materialize exactly. Quantized kinds also quantize activations in forward (fp8, int8,
mxfp4, nvfp4, bitnet once its transition has begun), which a transformers Linear cannot do."""


@dataclass(frozen=True)
class MappingRow:
    """One row of the mapping table (README, ``mapping.py``)."""

    ours: str
    transformers_class: str
    files: str


MAPPING_TABLE: tuple[MappingRow, ...] = (
    MappingRow(
        "text-only LLM: `llama`, `qwen2`, `qwen3`, `mistral`, `gemma`",
        "`LlamaForCausalLM`, `Qwen2ForCausalLM`, ... (the LLM's own class)",
        "config, safetensors (+ index when sharded), tokenizer, generation config",
    ),
    MappingRow(
        "`hf_clip` or `hf_siglip` + `mlp` (hidden = LLM width) + LLM",
        "`LlavaForConditionalGeneration`",
        "+ `LlavaImageProcessor`, `LlavaProcessor` with chat template",
    ),
    MappingRow(
        "`hf_siglip` (`feature_layer: -1`, `final_norm: true`) + `pixel_shuffle_mlp` "
        "(`hidden_layers: 0`, `bias: false`) + LLM",
        "`Idefics3ForConditionalGeneration`",
        "+ `Idefics3ImageProcessor` (no `Idefics3Processor`: see below)",
    ),
    MappingRow(
        "`hf_qwen2_audio` (`feature_layer: -1`) + `linear` (`bias: true`) + LLM",
        "`Qwen2AudioForConditionalGeneration`",
        "+ `WhisperFeatureExtractor`, `Qwen2AudioProcessor` with chat template",
    ),
)

NATIVE_HINT = (
    "export it in the native format instead: `mmpt export CHECKPOINT --to safetensors --out DIR` "
    "(loads with mmpretrain's MultimodalLM.from_pretrained(DIR))"
)


class UnmappableError(UserError):
    """The model has parts no transformers class represents; ``parts`` lists them."""

    def __init__(self, parts: list[tuple[str, str]]) -> None:
        self.parts = parts
        listed = "; ".join(f"{part}: {reason}" for part, reason in parts)
        super().__init__(f"cannot export to transformers (--to hf): {listed}. {NATIVE_HINT}")


def _field(cfg: Any, name: str, default: Any = None) -> Any:
    return getattr(cfg, name, default)


def _vision_tower_issues(part: str, enc: Any, target: str) -> list[tuple[str, str]]:
    issues = []
    if _field(enc, "tiling") is not None:
        issues.append(
            (part, "any-resolution tiling (transformers' Llava/Idefics3 classes take one view per image)")
        )
    if _field(enc, "pretrained") is not None and _field(enc, "image_size") is not None:
        from mmpretrain.encoders.hf_vision import resolve_hf_vision

        arch = resolve_hf_vision(enc)
        if arch.image_size != arch.native_size:
            issues.append(
                (
                    part,
                    f"image_size {arch.image_size} differs from the tower's {arch.native_size} (interpolated "
                    "position embeddings; the transformers classes have no such setting)",
                )
            )
    if target == LLAVA and _field(enc, "final_norm", False):
        issues.append((part, "final_norm: true (Llava takes a hidden state without post_layernorm)"))
    return issues


IMAGE_CONNECTORS = ("mlp", "pixel_shuffle_mlp")


def _image_target(
    cfg: ModelConfig, name: str, enc: Any, llm_hidden: int | None
) -> tuple[str | None, list[tuple[str, str]]]:
    part = f"encoders.{name} ({enc.name})"
    connector: Any = cfg.connectors.get("image")
    if connector is None:
        return None, [("connectors.image", "missing (every image encoder needs a connector)")]
    cpart = f"connectors.image ({connector.name})"
    issues: list[tuple[str, str]] = []
    if enc.name not in ("hf_clip", "hf_siglip"):
        issues.append(
            (part, "no transformers vision-language class uses this tower (Llava: hf_clip/hf_siglip)")
        )
    if connector.name not in IMAGE_CONNECTORS:
        issues.append(
            (cpart, "no transformers class has this connector (Llava: mlp, Idefics3: pixel_shuffle_mlp)")
        )
    if issues:
        return None, issues
    if connector.name == "mlp":
        issues = _vision_tower_issues(part, enc, LLAVA)
        hidden_dim = _field(connector, "hidden_dim")
        if hidden_dim is not None and llm_hidden is not None and hidden_dim != llm_hidden:
            issues.append((cpart, f"hidden_dim {hidden_dim} differs from the LLM width {llm_hidden} (Llava)"))
        return LLAVA, issues
    if enc.name != "hf_siglip":
        issues.append((part, "Idefics3's tower is SigLIP (use hf_siglip)"))
    issues += _vision_tower_issues(part, enc, IDEFICS3)
    last = (-1,) if _field(enc, "pretrained") is not None else (-1, _field(enc, "num_layers"))
    if enc.feature_layer not in last:
        issues.append((part, f"feature_layer {enc.feature_layer} (Idefics3 takes the last layer: -1)"))
    if not _field(enc, "final_norm", False):
        issues.append((part, "final_norm: false (Idefics3 applies post_layernorm: set final_norm: true)"))
    if connector.hidden_layers != 0 or connector.bias:
        issues.append((cpart, "Idefics3's connector is one bias-free Linear (hidden_layers: 0, bias: false)"))
    if connector.tokens_per_tile is not None:
        issues.append((cpart, "tokens_per_tile (image splitting is not exported)"))
    return IDEFICS3, issues


def _audio_target(cfg: ModelConfig, name: str, enc: Any) -> tuple[str | None, list[tuple[str, str]]]:
    part = f"encoders.{name} ({enc.name})"
    connector: Any = cfg.connectors.get("audio")
    if connector is None:
        return None, [("connectors.audio", "missing (every audio encoder needs a connector)")]
    cpart = f"connectors.audio ({connector.name})"
    issues: list[tuple[str, str]] = []
    if enc.name != "hf_qwen2_audio":
        issues.append(
            (part, "no transformers speech-language class uses this encoder (Qwen2-Audio: hf_qwen2_audio)")
        )
    elif enc.feature_layer != -1:
        issues.append((part, f"feature_layer {enc.feature_layer} (Qwen2-Audio takes the last layer: -1)"))
    if connector.name != "linear":
        issues.append(
            (cpart, "no transformers speech-language class has this connector (Qwen2-Audio: linear)")
        )
    elif not connector.bias:
        issues.append((cpart, "bias: false (Qwen2-Audio's projector has a bias)"))
    return (None if issues else QWEN2_AUDIO), issues


def kernel_issues(model: nn.Module) -> list[tuple[str, str]]:
    """Kernel-layer modules that a plain Linear cannot represent, grouped by kind."""
    from mmpretrain.kernels import kernel_modules

    by_kind: dict[str, list[str]] = {}
    for fqn, module in kernel_modules(model):
        kind = str(module.kind)
        if kind in WEIGHT_ONLY_KINDS:
            continue
        lam: Any = getattr(module, "lam", None)
        if kind == "bitnet" and lam is not None and float(lam) == 0.0:  # still 16-bit: a plain Linear
            continue
        by_kind.setdefault(kind, []).append(fqn)
    return [
        (
            f"{fqns[0]}" + (f" and {len(fqns) - 1} more" if len(fqns) > 1 else ""),
            f"kernel kind {kind} quantizes activations in its forward, which a transformers Linear cannot "
            "represent (sparse24/unstructured export as dense weights)",
        )
        for kind, fqns in sorted(by_kind.items())
    ]


def plan_hf_export(cfg: ModelConfig, model: nn.Module | None = None) -> str:
    """The transformers mapping of ``cfg`` (``causal_lm``, ``llava``, ``idefics3`` or
    ``qwen2_audio``); raises :class:`UnmappableError` listing every part that does not map.
    With ``model``, its kernel-layer modules are checked too."""
    issues: list[tuple[str, str]] = []
    for modality, tokenizer in sorted(cfg.media_tokenizers.items()):
        issues.append(
            (
                f"media_tokenizers.{modality} ({tokenizer.name})",
                "discrete media tokenizers have no transformers processor "
                "(the LLM alone would lose its media input)",
            )
        )
    llm_hidden = _field(cfg.llm, "hidden_size") if _field(cfg.llm, "pretrained") is None else None
    by_modality: dict[str, list[tuple[str, Any]]] = {}
    for name, enc in sorted(cfg.encoders.items()):
        by_modality.setdefault(enc.modality(), []).append((name, enc))  # type: ignore[attr-defined]
    target = CAUSAL_LM
    if len(by_modality) > 1:
        issues.append(("encoders", "images and audio in one model (no transformers class has both towers)"))
    for modality, encoders in sorted(by_modality.items()):
        if len(encoders) > 1:
            names = ", ".join(f"encoders.{n}" for n, _ in encoders)
            issues.append(
                (names, f"several {modality} encoders concatenated (transformers classes have one tower)")
            )
            continue
        name, enc = encoders[0]
        found, found_issues = (
            _image_target(cfg, name, enc, llm_hidden)
            if modality == "image"
            else _audio_target(cfg, name, enc)
        )
        issues += found_issues
        target = found or target
    if model is not None:
        issues += kernel_issues(model)
    if issues:
        raise UnmappableError(issues)
    return target


def mapping_table_markdown() -> str:
    """The mapping table as Markdown (the README's table)."""
    lines = ["| ours | transformers class | written with it |", "|---|---|---|"]
    lines += [f"| {row.ours} | {row.transformers_class} | {row.files} |" for row in MAPPING_TABLE]
    lines.append(
        "| anything else: timm/open_clip/Whisper/wav2vec2 towers, `perceiver_resampler`, `qformer`, "
        "`conv_pool`, `frame_stack_mlp`, several towers, image + audio, tiling, discrete media tokenizers, "
        "quantized kernel kinds | none: a clear error listing the parts | use `--to safetensors` |"
    )
    return "\n".join(lines)
