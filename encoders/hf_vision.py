"""``hf_clip`` and ``hf_siglip``: transformers ``CLIPVisionModel`` / ``SiglipVisionModel``.

Built from our config (random init) or loaded from ``pretrained`` (a local directory of a
full CLIP/SigLIP model, of which only the vision tower is loaded, or of the vision model
alone; a hub id where reachable). The module is the unmodified transformers model under
``vision_tower`` (the layout of transformers' Llava), so its weights export as they are.

Features follow transformers' Llava: ``hidden_states[feature_layer]`` (index 0 is the
embedding output, -1 the last layer before ``post_layernorm``; LLaVA uses -2), then
``select_strategy``:

- ``hf_clip``: ``default`` drops the class token (position 0), ``full`` keeps it:
  ``(S / patch)^2`` or ``(S / patch)^2 + 1`` tokens per tile.
- ``hf_siglip``: SigLIP has no class token, so there is nothing to drop: ``default`` and
  ``full`` both keep every patch token, ``(S / patch)^2``. (transformers' Llava drops
  position 0 under ``default`` whatever the tower, which for SigLIP discards a patch;
  SigLIP-based Llava checkpoints therefore use ``full``, the default here, and an export
  should always write ``full`` for this encoder.) SigLIP's attention-pooling head is never
  built (``vision_use_head: false``): the tokens do not use it.

Layers after ``feature_layer`` (and ``post_layernorm``) still run and get no gradient, as
in Llava; freeze the tower or let DDP find unused parameters when training it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from mmpretrain.errors import ConfigError, UserError
from mmpretrain.registry import ENCODERS

from .vision_common import (
    CLIP_MEAN,
    CLIP_STD,
    RGB,
    SIGLIP_MEAN,
    SIGLIP_STD,
    ResizeMode,
    VisionEncoder,
    VisionEncoderConfig,
    VisionProcessor,
    check_feature_layer,
    read_json,
    split_pretrained,
)

_KEY = "model.encoders.*.pretrained"


class HFVisionEncoderConfig(VisionEncoderConfig):
    """Shared fields of the transformers vision towers."""

    pretrained: str | None = None
    """Local model directory (config.json + weights) of a full CLIP/SigLIP model (only the
    vision tower is loaded) or of its vision model; a hub id where reachable. The
    architecture fields below are then taken from its config.json. None: random init."""
    hidden_size: int = Field(768, gt=0)
    """Transformer width (random init only)."""
    intermediate_size: int = Field(3072, gt=0)
    """MLP inner width (random init only)."""
    num_layers: int = Field(12, gt=0)
    """Transformer layers (random init only)."""
    num_heads: int = Field(12, gt=0)
    """Attention heads (random init only)."""
    patch_size: int = Field(16, gt=0)
    """Patch side in pixels (random init only)."""
    image_size: int | None = Field(None, gt=0)
    """Input resolution S (each tile is S x S); None: the model's (config.json, or 224 at
    random init). Another size than a pretrained model's interpolates its position
    embeddings (transformers `interpolate_pos_encoding`)."""
    feature_layer: int = -2
    """Index into `hidden_states` (0: embeddings, -1: last layer; LLaVA uses -2)."""
    select_strategy: Literal["default", "full"] = "default"
    """LLaVA's vision_feature_select_strategy: `default` drops the class token, `full` keeps it."""
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    """Attention kernel."""
    final_norm: bool = False
    """Apply the tower's `post_layernorm` to the selected tokens (Idefics3 and nanoVLM do
    this with the last layer's tokens; LLaVA does not)."""

    # transformers classes and the model_type values a pretrained directory may hold
    hf_classes: ClassVar[tuple[str, str]] = ("", "")
    model_types: ClassVar[tuple[str, ...]] = ()
    has_class_token: ClassVar[bool] = False
    default_mean: ClassVar[RGB] = CLIP_MEAN
    default_std: ClassVar[RGB] = CLIP_STD

    @model_validator(mode="after")
    def _check_heads(self) -> HFVisionEncoderConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self

    def drops_class_token(self) -> bool:
        """Whether the first token is removed (``select_strategy: default`` on CLIP)."""
        return self.has_class_token and self.select_strategy == "default"

    def processor(self) -> VisionProcessor:
        """Resize/crop/normalise by this config (mean/std default to the pretrained
        directory's preprocessor_config.json, else the backend's standard values)."""
        arch = resolve_hf_vision(self)
        return self.make_processor(arch.image_size, arch.mean, arch.std, functools.partial(_probe, self))


class HFClipEncoderConfig(HFVisionEncoderConfig):
    """transformers CLIPVisionModel (LLaVA's tower): a chosen hidden layer, class token dropped or kept."""

    name: Literal["hf_clip"]

    hf_classes: ClassVar[tuple[str, str]] = ("CLIPVisionModel", "CLIPVisionConfig")
    model_types: ClassVar[tuple[str, ...]] = ("clip", "clip_vision_model")
    has_class_token: ClassVar[bool] = True


class HFSiglipEncoderConfig(HFVisionEncoderConfig):
    """transformers SiglipVisionModel: a chosen hidden layer, every patch token (no class token)."""

    name: Literal["hf_siglip"]
    select_strategy: Literal["default", "full"] = "full"
    """LLaVA's vision_feature_select_strategy; SigLIP has no class token, so both keep every
    patch token (transformers' Llava would drop a patch under `default`: export writes `full`)."""
    resize: ResizeMode = "stretch"
    """How an image becomes image_size square (SigLIP's processor stretches: `stretch`;
    or `center_crop`, `pad`)."""

    hf_classes: ClassVar[tuple[str, str]] = ("SiglipVisionModel", "SiglipVisionConfig")
    model_types: ClassVar[tuple[str, ...]] = ("siglip", "siglip_vision_model")
    default_mean: ClassVar[RGB] = SIGLIP_MEAN
    default_std: ClassVar[RGB] = SIGLIP_STD


@dataclass(frozen=True)
class HFVisionArch:
    """What a config resolves to: the transformers config and the preprocessing defaults."""

    hf_config: Any
    source: str | None  # local directory or hub id to load weights from
    image_size: int
    native_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _hf_config_class(cfg: HFVisionEncoderConfig) -> Any:
    import transformers

    return getattr(transformers, cfg.hf_classes[1])


def resolve_hf_vision(cfg: HFVisionEncoderConfig) -> HFVisionArch:
    """The transformers vision config of ``cfg`` (read from ``pretrained``'s config.json,
    no weights) and the preprocessing defaults."""
    config_class = _hf_config_class(cfg)
    mean: tuple[float, ...] = cfg.default_mean
    std: tuple[float, ...] = cfg.default_std
    source: str | None = None
    if cfg.pretrained is None:
        size = cfg.image_size or 224
        kwargs: dict[str, Any] = {
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads,
            "patch_size": cfg.patch_size,
            "image_size": size,
        }
        if cfg.name == "hf_siglip":
            kwargs["vision_use_head"] = False
        hf_config = config_class(**kwargs)
    else:
        local = split_pretrained(cfg.pretrained, _KEY)
        if local is not None:
            directory = _check_directory(local, cfg)
            source = str(directory)
            mean, std = _preprocessor_mean_std(directory, mean, std)
        else:
            source = cfg.pretrained
        try:
            hf_config = config_class.from_pretrained(source)
        except OSError as exc:
            raise UserError(
                f"cannot load {cfg.name} {cfg.pretrained!r}: {exc}. Use a local directory with config.json "
                "and weights (the hub is unreachable or HF_HUB_OFFLINE=1 is set)"
            ) from exc
        if cfg.name == "hf_siglip":
            hf_config.vision_use_head = False
    native = int(hf_config.image_size)
    return HFVisionArch(hf_config, source, cfg.image_size or native, native, tuple(mean), tuple(std))


def _check_directory(path: Path, cfg: HFVisionEncoderConfig) -> Path:
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ConfigError(
            f"{_KEY}: {path} is not a model directory (config.json and weights); {cfg.name} needs one"
        )
    model_type = read_json(path / "config.json").get("model_type")
    if model_type not in cfg.model_types:
        raise ConfigError(
            f"{_KEY}: {path} holds a {model_type!r} model but {cfg.name} reads "
            f"{' or '.join(cfg.model_types)}; pick the encoder name matching the checkpoint"
        )
    return path


def _preprocessor_mean_std(
    directory: Path, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """image_mean/image_std of the directory's preprocessor_config.json, if it has them."""
    file = directory / "preprocessor_config.json"
    if not file.is_file():
        return mean, std
    data = read_json(file)
    new_mean, new_std = data.get("image_mean"), data.get("image_std")
    if isinstance(new_mean, list) and isinstance(new_std, list) and len(new_mean) == len(new_std) == 3:
        return tuple(float(m) for m in new_mean), tuple(float(s) for s in new_std)
    return mean, std


def _probe(cfg: HFVisionEncoderConfig) -> tuple[int, int]:
    """(tokens per tile, width): ``(S // patch)^2``, + 1 for a kept class token."""
    arch = resolve_hf_vision(cfg)
    patches = (arch.image_size // int(arch.hf_config.patch_size)) ** 2
    tokens = patches + (1 if cfg.has_class_token and not cfg.drops_class_token() else 0)
    return tokens, int(arch.hf_config.hidden_size)


class HFVisionEncoder(VisionEncoder):
    """A transformers vision model; tokens are one hidden state, class token per strategy."""

    config: HFVisionEncoderConfig

    def __init__(self, config: HFVisionEncoderConfig) -> None:
        super().__init__(config)
        import transformers

        arch = resolve_hf_vision(config)
        model_class = getattr(transformers, config.hf_classes[0])
        if arch.source is None:
            model = model_class._from_config(arch.hf_config, attn_implementation=config.attn_implementation)
        else:
            try:
                model = model_class.from_pretrained(
                    arch.source, config=arch.hf_config, attn_implementation=config.attn_implementation
                )
            except OSError as exc:
                raise UserError(
                    f"cannot load {config.name} weights {config.pretrained!r}: {exc}. Use a local directory "
                    "with config.json and weights (the hub is unreachable or HF_HUB_OFFLINE=1 is set)"
                ) from exc
        layers = int(arch.hf_config.num_hidden_layers)
        self.vision_tower = model
        self.feature_index = check_feature_layer(
            config.feature_layer, layers + 1, "model.encoders.*.feature_layer", "hidden states"
        )
        self.interpolate_pos_encoding = arch.image_size != arch.native_size
        self.drop_class_token = config.drops_class_token()
        self.out_dim = int(arch.hf_config.hidden_size)

    @property
    def post_layernorm(self) -> nn.Module:
        """The tower's final LayerNorm (its place differs across transformers versions)."""
        return dict(self.vision_tower.named_modules())[
            next(n for n, _ in self.vision_tower.named_modules() if n.endswith("post_layernorm"))
        ]

    def encode_tiles(self, pixels: torch.Tensor) -> torch.Tensor:
        """Tokens ``[n, T, D]`` of ``n`` views."""
        out = self.vision_tower(
            pixel_values=pixels,
            output_hidden_states=True,
            interpolate_pos_encoding=self.interpolate_pos_encoding,
        )
        hidden = out.hidden_states[self.feature_index]
        if self.config.final_norm:
            hidden = self.post_layernorm(hidden)
        return hidden[:, 1:] if self.drop_class_token else hidden


def build_hf_vision_encoder(config: HFVisionEncoderConfig) -> HFVisionEncoder:
    """Build the transformers vision encoder of ``config`` (random init or ``pretrained``)."""
    return HFVisionEncoder(config)


ENCODERS.add("hf_clip", build_hf_vision_encoder, config=HFClipEncoderConfig)
ENCODERS.add("hf_siglip", build_hf_vision_encoder, config=HFSiglipEncoderConfig)
