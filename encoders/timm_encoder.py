"""``timm``: any timm image model by name; tokens are one block's (or stage's) output.

ViT-like models give their patch tokens (``forward_intermediates`` in ``NLC`` format),
optionally led by their prefix tokens (class and register tokens); other models (convnets)
give their feature map flattened to ``H x W`` tokens. Blocks after ``feature_layer``, the
final norm (unless ``final_norm``) and the head are pruned at build, so they cost nothing
and hold no parameters. The token count comes from tracing the architecture on the meta
device, without weights, so ``num_tokens`` is exact for any model.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field

from mmpretrain.errors import ConfigError, UserError
from mmpretrain.registry import ENCODERS

from .vision_common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VisionEncoder,
    VisionEncoderConfig,
    VisionProcessor,
    check_feature_layer,
    find_weights_file,
    load_state_dict_file,
    split_pretrained,
)

if TYPE_CHECKING:
    from torch import nn

_KEY = "model.encoders.*.pretrained"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors")


class TimmEncoderConfig(VisionEncoderConfig):
    """Any timm image model (ViTs, convnets, ...) by name; tokens from a chosen block."""

    name: Literal["timm"]
    model: str
    """timm model name, optionally with a pretrained tag (`vit_base_patch16_224`,
    `vit_so400m_patch14_siglip_384.webli`, `convnext_tiny`; `timm.list_models()`)."""
    pretrained: str | None = None
    """Local weights: a checkpoint file (.safetensors/.pth/.bin) or a directory holding
    model.safetensors or pytorch_model.bin; or a hub id such as
    `timm/vit_base_patch16_224.augreg2_in21k_ft_in1k` (only where the hub is reachable).
    The architecture always comes from `model` and `model_kwargs`. None: random init."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments of `timm.create_model` (e.g. a tiny variant: `{embed_dim: 32,
    depth: 2, num_heads: 2, img_size: 32}`); `num_classes` defaults to 0 (no head)."""
    image_size: int | None = Field(None, gt=0)
    """Input resolution S (each tile is S x S); None: `model_kwargs.img_size`, else the
    model's pretrained input size. ViTs built for another size get their position
    embeddings resampled (timm `set_input_size`)."""
    feature_layer: int = -1
    """Which intermediate output gives the tokens, as timm's `forward_intermediates`
    counts them (blocks of a ViT, stages of a convnet; negative counts from the end)."""
    keep_class_token: bool = False
    """Keep the prefix tokens (class and register tokens) before the patch tokens; no
    effect on models without any."""
    final_norm: bool = False
    """Apply the model's final norm to the chosen layer's tokens (as its last layer would)."""

    def processor(self) -> VisionProcessor:
        """Resize/crop/normalise by this config (mean/std default to the model's
        pretrained config, ImageNet when it has none); tokens traced on the meta device."""
        image_size, mean, std = _resolved_preprocessing(self)
        return self.make_processor(image_size, mean, std, functools.partial(_probe, self))


def _check_model_name(model: str) -> None:
    import timm

    if timm.is_model(model):
        return
    arch = model.split(".", 1)[0]
    close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
    hint = f"; similar: {', '.join(close)}" if close else ""
    raise ConfigError(f"model.encoders.*.model: {model!r} is not a timm model{hint} (see timm.list_models())")


def _resolved_preprocessing(cfg: TimmEncoderConfig) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Image size, mean and std the model expects (before the config's overrides)."""
    from timm.models import get_pretrained_cfg

    _check_model_name(cfg.model)
    pretrained_cfg = get_pretrained_cfg(cfg.model)
    defaults = pretrained_cfg.to_dict() if pretrained_cfg is not None else {}
    size = (
        cfg.image_size
        or cfg.model_kwargs.get("img_size")
        or (defaults.get("input_size") or (3, 224, 224))[-1]
    )
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ConfigError(
                f"model.encoders.*: timm encoders take square inputs, got img_size {list(size)}"
            )
        size = size[0]
    mean = tuple(defaults.get("mean") or IMAGENET_MEAN)
    std = tuple(defaults.get("std") or IMAGENET_STD)
    if len(mean) != 3 or len(std) != 3:  # e.g. single-channel models
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return int(size), mean, std


def create_timm_model(cfg: TimmEncoderConfig, image_size: int, load_weights: bool = True) -> nn.Module:
    """The full timm model of ``cfg`` (weights loaded if asked), at ``image_size``."""
    import timm

    _check_model_name(cfg.model)
    kwargs: dict[str, Any] = {"num_classes": 0, **cfg.model_kwargs}
    source = split_pretrained(cfg.pretrained, _KEY) if (load_weights and cfg.pretrained) else None
    try:
        if load_weights and cfg.pretrained and source is None:  # hub id
            hub_id = cfg.pretrained.removeprefix("hf-hub:")
            model = timm.create_model(
                cfg.model, pretrained=True, pretrained_cfg_overlay={"hf_hub_id": hub_id}, **kwargs
            )
        else:
            model = timm.create_model(cfg.model, pretrained=False, **kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"model.encoders.*.model_kwargs: timm model {cfg.model!r} rejects them: {exc}"
        ) from exc
    except (OSError, RuntimeError) as exc:
        raise UserError(
            f"cannot load timm weights {cfg.pretrained!r}: {exc}. Use a local checkpoint file or "
            "directory (the hub is unreachable or HF_HUB_OFFLINE=1 is set)"
        ) from exc
    if source is not None:
        _load_local(model, source if source.is_file() else find_weights_file(source, _WEIGHT_FILES, _KEY))
    patch_embed = getattr(model, "patch_embed", None)
    current = getattr(patch_embed, "img_size", None)
    if current is not None and tuple(current) != (image_size, image_size):
        if not hasattr(model, "set_input_size"):
            raise ConfigError(
                f"model.encoders.*.image_size: timm model {cfg.model!r} is built for {tuple(current)} "
                f"and cannot be resized; set image_size: {current[0]} or model_kwargs.img_size"
            )
        model.set_input_size(img_size=(image_size, image_size))  # type: ignore[operator]
    return model


def _load_local(model: nn.Module, path: Any) -> None:
    """Load a local checkpoint strictly (classifier weights dropped: the model has no
    head), after the model family's own checkpoint filter (position embedding resampling,
    key renames)."""
    state = load_state_dict_file(path)
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    classifiers = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    for name in (classifiers,) if isinstance(classifiers, str) else classifiers:
        if not any(k.startswith(f"{name}.") for k, _ in model.named_parameters()):
            state.pop(f"{name}.weight", None)
            state.pop(f"{name}.bias", None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"weights {path} do not match timm model {type(model).__name__}: {exc}") from exc


def timm_tokens(
    model: nn.Module, pixels: torch.Tensor, index: int, keep_prefix: bool, norm: bool
) -> torch.Tensor:
    """Tokens ``[n, T, D]`` of intermediate output ``index`` (absolute)."""
    if getattr(model, "num_prefix_tokens", None) is not None:
        (item,) = model.forward_intermediates(  # type: ignore[operator]
            pixels,
            indices=[index],
            norm=norm,
            output_fmt="NLC",
            intermediates_only=True,
            return_prefix_tokens=True,
        )
        if isinstance(item, tuple):
            tokens, prefix = item
            if keep_prefix and prefix is not None and prefix.shape[1]:
                tokens = torch.cat([prefix, tokens], dim=1)
            return tokens
        return item
    (feature_map,) = model.forward_intermediates(  # type: ignore[operator]
        pixels, indices=[index], norm=norm, output_fmt="NCHW", intermediates_only=True
    )
    return feature_map.flatten(2).transpose(1, 2)


def _layer_count(model: nn.Module) -> int:
    blocks = getattr(model, "blocks", None)
    if blocks is not None and getattr(model, "num_prefix_tokens", None) is not None:
        return len(blocks)
    return len(getattr(model, "feature_info", []) or [])


def _probe(cfg: TimmEncoderConfig) -> tuple[int, int]:
    """(tokens per tile, feature width), traced on the meta device (no weights, no memory)."""
    image_size = _resolved_preprocessing(cfg)[0]
    with torch.device("meta"):
        model = create_timm_model(cfg, image_size, load_weights=False)
        index = check_feature_layer(
            cfg.feature_layer, _layer_count(model), "model.encoders.*.feature_layer", "layers"
        )
        tokens = timm_tokens(
            model, torch.empty(1, 3, image_size, image_size), index, cfg.keep_class_token, cfg.final_norm
        )
    return int(tokens.shape[1]), int(tokens.shape[2])


class TimmEncoder(VisionEncoder):
    """A timm model pruned after ``feature_layer``; ``encode_tiles`` gives its tokens."""

    config: TimmEncoderConfig

    def __init__(self, config: TimmEncoderConfig) -> None:
        super().__init__(config)
        image_size = self.processor.transform.image_size
        model = create_timm_model(config, image_size)
        count = _layer_count(model)
        index = check_feature_layer(config.feature_layer, count, "model.encoders.*.feature_layer", "layers")
        if hasattr(model, "prune_intermediate_layers"):
            with contextlib.suppress(NotImplementedError):
                model.prune_intermediate_layers(  # type: ignore[operator]
                    indices=[index], prune_norm=not config.final_norm, prune_head=True
                )
        self.model = model
        self.feature_index = index
        self.out_dim = self.processor.out_dim

    def encode_tiles(self, pixels: torch.Tensor) -> torch.Tensor:
        """Tokens ``[n, T, D]`` of ``n`` views."""
        cfg = self.config
        return timm_tokens(self.model, pixels, self.feature_index, cfg.keep_class_token, cfg.final_norm)


def build_timm_encoder(config: TimmEncoderConfig) -> TimmEncoder:
    """Build the timm encoder of ``config`` (random init or ``pretrained`` weights)."""
    return TimmEncoder(config)


ENCODERS.add("timm", build_timm_encoder, config=TimmEncoderConfig)
