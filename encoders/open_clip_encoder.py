"""``open_clip``: the vision tower of any open_clip model, by model name.

Only the vision tower is built (open_clip's own ``_build_vision_tower``), so no text tower
weights are ever created or kept; a full CLIP checkpoint contributes its ``visual.*``
tensors. Tokens are one transformer block's output (open_clip ``forward_intermediates``):
the patch tokens, optionally led by the class token. ``feature_layer: -1`` with
``final_norm: true`` equals the tower's ``output_tokens`` (``ln_post`` applied). Blocks
after ``feature_layer``, ``ln_post`` (unless ``final_norm``) and the projection are pruned
at build. Towers backed by timm (``timm_model_name``, e.g. SigLIP/EVA configs) and the
ModifiedResNet (RN50...) work too: a convnet's feature map becomes ``H x W`` tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from mmpretrain.errors import ConfigError, UserError
from mmpretrain.registry import ENCODERS

from .vision_common import (
    CLIP_MEAN,
    CLIP_STD,
    VisionEncoder,
    VisionEncoderConfig,
    VisionProcessor,
    check_feature_layer,
    find_weights_file,
    load_state_dict_file,
    read_json,
    split_pretrained,
)

_KEY = "model.encoders.*.pretrained"
_WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
)


class OpenClipEncoderConfig(VisionEncoderConfig):
    """The vision tower of an open_clip model (ViT, timm-backed or ResNet) by name."""

    name: Literal["open_clip"]
    model: str
    """open_clip model name (`ViT-B-32`, `ViT-L-14-336`, `ViT-SO400M-14-SigLIP`;
    `open_clip.list_models()`)."""
    pretrained: str | None = None
    """Local weights: a checkpoint file (full CLIP, whose `visual.*` tensors are used, or
    the tower alone) or a directory in open_clip's layout (open_clip_config.json, whose
    model_cfg then replaces `model`'s, and open_clip_model.safetensors); or, where the hub
    is reachable, an open_clip pretrained tag of `model` (`laion2b_s34b_b79k`) or
    `hf-hub:ORG/REPO`. None: random init."""
    vision_cfg: dict[str, Any] = Field(default_factory=dict)
    """Overrides of the model config's vision_cfg (open_clip CLIPVisionCfg fields), e.g. a
    tiny tower: `{width: 32, layers: 2, head_width: 16, patch_size: 8}`."""
    image_size: int | None = Field(None, gt=0)
    """Input resolution S (each tile is S x S); None: the model config's. A checkpoint's
    position embeddings are resampled to it."""
    quick_gelu: bool | None = None
    """QuickGELU activations (OpenAI weights need them); None: from the model name
    (`-quickgelu`) or the pretrained tag."""
    feature_layer: int = -1
    """Which transformer block's output gives the tokens (negative counts from the end;
    stages for ResNet towers)."""
    keep_class_token: bool = False
    """Keep the class token before the patch tokens."""
    final_norm: bool = False
    """Apply the tower's final LayerNorm (`ln_post`) to the chosen block's tokens."""

    def processor(self) -> VisionProcessor:
        """Resize/crop/normalise by this config (mean/std default to the pretrained tag's,
        else the CLIP values); tokens traced on the meta device."""
        arch = resolve_open_clip(self)
        return self.make_processor(arch.image_size, arch.mean, arch.std, functools.partial(_probe, self))


@dataclass(frozen=True)
class OpenClipArch:
    """The tower to build and where its weights come from, resolved from a config."""

    embed_dim: int
    vision_cfg: dict[str, Any]
    quick_gelu: bool
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: Path | None  # local file
    download: dict[str, Any] | None  # open_clip pretrained cfg of a tag, or {"hf_hub": repo}


def resolve_open_clip(cfg: OpenClipEncoderConfig) -> OpenClipArch:
    """Architecture, preprocessing defaults and weight source of ``cfg`` (no weights read)."""
    import open_clip
    from open_clip.model import CLIPVisionCfg

    local = split_pretrained(cfg.pretrained, _KEY) if cfg.pretrained else None
    download: dict[str, Any] | None = None
    preprocess: dict[str, Any] = {}
    weights: Path | None = None
    if local is not None and local.is_dir() and (local / "open_clip_config.json").is_file():
        data = read_json(local / "open_clip_config.json")
        if not isinstance(data.get("model_cfg"), dict):
            raise ConfigError(f"{_KEY}: {local / 'open_clip_config.json'} has no model_cfg")
        model_cfg = data["model_cfg"]
        preprocess = data.get("preprocess_cfg") or {}
    else:
        model_cfg = open_clip.get_model_config(cfg.model.replace("/", "-"))
        if model_cfg is None:
            stem = cfg.model.split("-")[0]
            close = [m for m in open_clip.list_models() if m.startswith(stem)][:8]
            hint = f"; similar: {', '.join(close)}" if close else ""
            raise ConfigError(
                f"model.encoders.*.model: {cfg.model!r} is not an open_clip model{hint} "
                "(see open_clip.list_models())"
            )
    if local is not None:
        weights = local if local.is_file() else find_weights_file(local, _WEIGHT_FILES, _KEY)
    elif cfg.pretrained is not None:
        if cfg.pretrained.startswith("hf-hub:"):
            download = {"hf_hub": cfg.pretrained.removeprefix("hf-hub:").rstrip("/") + "/"}
        else:
            download = open_clip.get_pretrained_cfg(cfg.model, cfg.pretrained) or None
            if download is None:
                tags = open_clip.list_pretrained_tags_by_model(cfg.model)
                raise ConfigError(
                    f"{_KEY}: {cfg.pretrained!r} is neither a local file/directory nor a pretrained tag of "
                    f"open_clip model {cfg.model!r} (tags: {', '.join(tags) or 'none'})"
                )
            preprocess = download
    vision = {**model_cfg["vision_cfg"], **cfg.vision_cfg}
    if cfg.image_size is not None:
        vision["image_size"] = cfg.image_size
    known = {f.name for f in dataclasses.fields(CLIPVisionCfg)}
    unknown = sorted(set(vision) - known)
    if unknown:
        raise ConfigError(
            f"model.encoders.*.vision_cfg: unknown keys {unknown}; allowed: {', '.join(sorted(known))}"
        )
    if vision.get("patch_dropout"):
        raise ConfigError(
            "model.encoders.*.vision_cfg.patch_dropout must be 0: dropped patches change num_tokens"
        )
    size = vision.get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ConfigError(
                f"model.encoders.*: open_clip encoders take square inputs, got image_size {list(size)}"
            )
        size = size[0]
    quick_gelu = cfg.quick_gelu
    if quick_gelu is None:
        quick_gelu = bool((download or {}).get("quick_gelu", model_cfg.get("quick_gelu", False)))
    return OpenClipArch(
        embed_dim=int(model_cfg.get("embed_dim", 512)),
        vision_cfg=vision,
        quick_gelu=quick_gelu,
        image_size=int(size),
        mean=tuple(preprocess.get("mean") or CLIP_MEAN),
        std=tuple(preprocess.get("std") or CLIP_STD),
        weights=weights,
        download=download,
    )


def build_tower(arch: OpenClipArch) -> nn.Module:
    """The random-init vision tower of ``arch`` (open_clip's builder; no text tower)."""
    from open_clip.model import _build_vision_tower

    try:
        return _build_vision_tower(arch.embed_dim, dict(arch.vision_cfg), arch.quick_gelu)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"model.encoders.*.vision_cfg: open_clip cannot build this tower: {exc}") from exc


def fit_input_size(tower: nn.Module, image_size: int) -> None:
    """timm-backed towers are built at the timm model's own size: resample to ``image_size``."""
    trunk = getattr(tower, "trunk", None)
    current = getattr(getattr(trunk, "patch_embed", None), "img_size", None)
    if current is not None and tuple(current) != (image_size, image_size):
        tower.set_input_size(image_size)  # type: ignore[operator]


def _fetch(download: dict[str, Any]) -> Path:
    """Download (or find cached) weights of a tag / hf-hub repo; UserError offline."""
    import open_clip

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline and not download.get("hf_hub"):
        raise UserError(
            f"open_clip weights {download.get('url')} need a download but HF_HUB_OFFLINE=1 is set; "
            "use a local checkpoint file"
        )
    try:
        path = open_clip.download_pretrained(download)
    except Exception as exc:
        raise UserError(
            f"cannot download open_clip weights ({download.get('hf_hub') or download.get('url')}): {exc}. "
            "Use a local checkpoint file or directory (the hub is unreachable or HF_HUB_OFFLINE=1 is set)"
        ) from exc
    if not path:
        raise UserError(f"open_clip has no download for {download}; use a local checkpoint file")
    return Path(path)


def load_tower_weights(tower: nn.Module, path: Path) -> None:
    """Load a full CLIP (``visual.*``) or tower-only checkpoint into ``tower``, strictly;
    position embeddings are resampled to the tower's grid."""
    from open_clip.model import resize_pos_embed

    state = load_state_dict_file(path)
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    if "positional_embedding" in state and hasattr(tower, "grid_size"):
        holder = {"visual.positional_embedding": state["positional_embedding"]}
        resize_pos_embed(holder, SimpleNamespace(visual=tower))
        state["positional_embedding"] = holder["visual.positional_embedding"]
    try:
        tower.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(
            f"weights {path} do not match the open_clip vision tower (check model, vision_cfg and "
            f"image_size against the checkpoint): {exc}"
        ) from exc


def _token_format(tower: nn.Module) -> str:
    from open_clip.transformer import VisionTransformer

    if isinstance(tower, VisionTransformer):
        return "NLC"
    trunk = getattr(tower, "trunk", None)
    if trunk is not None and getattr(trunk, "num_prefix_tokens", None) is not None:
        return "NLC"
    return "NCHW"


def _layer_count(tower: nn.Module) -> int:
    transformer = getattr(tower, "transformer", None)
    if transformer is not None and hasattr(transformer, "resblocks"):
        return len(transformer.resblocks)
    trunk = getattr(tower, "trunk", None)
    if trunk is not None:
        if getattr(trunk, "num_prefix_tokens", None) is not None and hasattr(trunk, "blocks"):
            return len(trunk.blocks)
        return len(getattr(trunk, "feature_info", []) or [])
    return 5  # ModifiedResNet: stem + 4 stages


def open_clip_tokens(
    tower: nn.Module, pixels: torch.Tensor, index: int, keep_class: bool, norm: bool
) -> torch.Tensor:
    """Tokens ``[n, T, D]`` of block ``index`` (absolute) of an open_clip vision tower."""
    fmt = _token_format(tower)
    kwargs: dict[str, Any] = (
        {"normalize_intermediates": norm, "output_extra_tokens": keep_class} if fmt == "NLC" else {}
    )
    out = tower.forward_intermediates(  # type: ignore[operator]
        pixels, indices=[index], intermediates_only=True, output_fmt=fmt, **kwargs
    )
    tokens = out["image_intermediates"][0]
    if fmt == "NCHW":
        return tokens.flatten(2).transpose(1, 2)
    prefix = out.get("image_intermediates_prefix")
    if keep_class and prefix and prefix[0] is not None and prefix[0].shape[1]:
        tokens = torch.cat([prefix[0], tokens], dim=1)
    return tokens


def _prune(tower: nn.Module, index: int, keep_norm: bool) -> None:
    """Drop what the chosen block's tokens never use (later blocks, norm, pooling, head)."""
    if hasattr(tower, "prune_intermediate_layers"):  # open_clip VisionTransformer
        tower.prune_intermediate_layers(  # type: ignore[operator]
            indices=[index], prune_norm=not keep_norm, prune_head=True
        )
        if getattr(tower, "attn_pool", None) is not None:  # CoCa-style pooler: unused by tokens
            tower.attn_pool = nn.Identity()
            tower.attn_pool_contrastive = None  # type: ignore[assignment]
        return
    trunk = getattr(tower, "trunk", None)
    if trunk is not None:  # TimmModel
        if hasattr(trunk, "prune_intermediate_layers"):
            with contextlib.suppress(NotImplementedError):
                trunk.prune_intermediate_layers(indices=[index], prune_norm=not keep_norm, prune_head=True)
        tower.head = nn.Identity()
        return
    if hasattr(tower, "attnpool"):  # ModifiedResNet: stages after `index` never run
        tower.attnpool = nn.Identity()
        for stage in range(index + 1, 5):
            setattr(tower, f"layer{stage}", nn.Identity())


def _probe(cfg: OpenClipEncoderConfig) -> tuple[int, int]:
    """(tokens per tile, feature width), traced on the meta device (no weights)."""
    arch = resolve_open_clip(cfg)
    with torch.device("meta"):
        tower = build_tower(arch)
        fit_input_size(tower, arch.image_size)
        index = check_feature_layer(
            cfg.feature_layer, _layer_count(tower), "model.encoders.*.feature_layer", "blocks"
        )
        pixels = torch.empty(1, 3, arch.image_size, arch.image_size)
        tokens = open_clip_tokens(tower, pixels, index, cfg.keep_class_token, cfg.final_norm)
    return int(tokens.shape[1]), int(tokens.shape[2])


class OpenClipEncoder(VisionEncoder):
    """An open_clip vision tower pruned after ``feature_layer``."""

    config: OpenClipEncoderConfig

    def __init__(self, config: OpenClipEncoderConfig) -> None:
        super().__init__(config)
        arch = resolve_open_clip(config)
        tower = build_tower(arch)
        weights = arch.weights if arch.download is None else _fetch(arch.download)
        if weights is not None:
            load_tower_weights(tower, weights)
        fit_input_size(tower, arch.image_size)
        index = check_feature_layer(
            config.feature_layer, _layer_count(tower), "model.encoders.*.feature_layer", "blocks"
        )
        _prune(tower, index, config.final_norm)
        self.visual = tower
        self.feature_index = index
        self.out_dim = self.processor.out_dim

    def encode_tiles(self, pixels: torch.Tensor) -> torch.Tensor:
        """Tokens ``[n, T, D]`` of ``n`` views."""
        cfg = self.config
        return open_clip_tokens(self.visual, pixels, self.feature_index, cfg.keep_class_token, cfg.final_norm)


def build_open_clip_encoder(config: OpenClipEncoderConfig) -> OpenClipEncoder:
    """Build the open_clip vision tower of ``config`` (random init or ``pretrained``)."""
    return OpenClipEncoder(config)


ENCODERS.add("open_clip", build_open_clip_encoder, config=OpenClipEncoderConfig)
