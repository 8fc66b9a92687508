"""What every vision encoder shares: its image transform, any-resolution tiling, the
weight-free processor, and the tile bookkeeping of ``forward``.

Each backend (``timm``, ``open_clip``, ``hf_clip``, ``hf_siglip``) owns its transform
through its config (size, resize mode, mean/std); this module only implements it.

**Without tiling** an item is ``[3, S, S]`` and yields ``tokens_per_tile`` tokens.

**With tiling** (LLaVA-NeXT's "anyres") an item is ``[tiles, 3, S, S]``: the grid of
``grid_options`` that best fits the image (LLaVA-NeXT's ``select_best_resolution``: most
of the image's own pixels kept, then least padding) is filled with the image resized to
fit and padded with the mean colour, cut row by row into ``S x S`` tiles, followed by the
whole image as a thumbnail when the grid has more than one tile (InternVL's rule: a 1x1
grid already is the whole image). Items of one batch then differ only in dim 0; the
pipeline zero-pads it and passes each item's tile count as ``sizes``, and ``forward``
encodes only the valid tiles: ``lengths[i] = tiles_i * tokens_per_tile``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import field_validator

from mmpretrain.config import ConfigModel
from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.errors import ConfigError, DataFormatError, UserError

from .base import Encoder, EncoderConfig, EncoderProcessor

RGB = tuple[float, float, float]

CLIP_MEAN: RGB = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: RGB = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN: RGB = (0.5, 0.5, 0.5)
SIGLIP_STD: RGB = (0.5, 0.5, 0.5)
IMAGENET_MEAN: RGB = (0.485, 0.456, 0.406)
IMAGENET_STD: RGB = (0.229, 0.224, 0.225)

ResizeMode = Literal["center_crop", "stretch", "pad"]
Interpolation = Literal["bicubic", "bilinear"]

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


class TilingConfig(ConfigModel):
    """Any-resolution tiling: a grid of ``S x S`` tiles chosen per image, plus a thumbnail."""

    grid_options: tuple[tuple[int, int], ...] = ((1, 1), (1, 2), (2, 1), (2, 2))
    """Candidate grids as ``[rows, cols]`` (rows of tiles down, columns across); each image
    takes the one that keeps most of its pixels at the least padding (LLaVA-NeXT)."""
    thumbnail: bool = True
    """Append the whole image, resized to one tile, after the tiles of a multi-tile grid."""

    @field_validator("grid_options")
    @classmethod
    def _check_grids(cls, grids: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        if not grids:
            raise ValueError("grid_options needs at least one [rows, cols] grid")
        for rows, cols in grids:
            if rows < 1 or cols < 1:
                raise ValueError(f"grid [{rows}, {cols}] must have rows >= 1 and cols >= 1")
        return grids

    @property
    def max_tiles(self) -> int:
        """Most tiles one image can produce (thumbnail included)."""
        return max(r * c + (1 if self.thumbnail and r * c > 1 else 0) for r, c in self.grid_options)


class VisionEncoderConfig(EncoderConfig):
    """Preprocessing fields shared by the vision encoders (the backend sets defaults)."""

    resize: ResizeMode = "center_crop"
    """How an image becomes ``image_size`` square: `center_crop` (shortest side to
    image_size, then centre crop; CLIP/timm eval), `stretch` (resize both sides, aspect
    not kept; SigLIP), `pad` (pad to a square with the mean colour, then resize; LLaVA-1.5)."""
    interpolation: Interpolation = "bicubic"
    """Resampling filter of every resize."""
    mean: RGB | None = None
    """Per-channel mean subtracted from pixels in [0, 1] (None: the backend's default)."""
    std: RGB | None = None
    """Per-channel std pixels are divided by (None: the backend's default)."""
    tiling: TilingConfig | None = None
    """Any-resolution tiling, e.g. `{grid_options: [[1,1],[1,2],[2,1],[2,2]], thumbnail:
    true}` (None: one ``image_size`` view per image)."""

    @field_validator("std")
    @classmethod
    def _check_std(cls, std: RGB | None) -> RGB | None:
        if std is not None and any(s <= 0 for s in std):
            raise ValueError(f"std values must be > 0, got {list(std)}")
        return std

    def make_processor(
        self,
        image_size: int,
        default_mean: Sequence[float],
        default_std: Sequence[float],
        probe: Callable[[], tuple[int, int]],
    ) -> VisionProcessor:
        """The processor of this config: its resize/crop/tiling, its mean/std or the
        backend's defaults, and the backend's weight-free token probe."""
        transform = ImageTransform(
            image_size,
            self.mean or default_mean,
            self.std or default_std,
            self.resize,
            self.interpolation,
            self.tiling,
        )
        return VisionProcessor(transform, probe)

    def modality(self) -> Literal["image"]:
        """Vision encoders read images."""
        return "image"


# ---------------------------------------------------------------------------- transform


def _resize(image: Image.Image, size: tuple[int, int], interpolation: Interpolation) -> Image.Image:
    if image.size == size:
        return image
    return image.resize(size, resample=_RESAMPLE[interpolation])


def _fill_colour(mean: Sequence[float]) -> tuple[int, int, int]:
    r, g, b = (round(min(max(m, 0.0), 1.0) * 255) for m in mean)
    return (r, g, b)


def _fit_and_pad(
    image: Image.Image, width: int, height: int, mean: Sequence[float], interpolation: Interpolation
) -> Image.Image:
    """Resize keeping the aspect ratio to fit ``width x height``; centre it on a canvas of
    the mean colour (so padding normalises to about 0)."""
    scale = min(width / image.width, height / image.height)
    new = (max(1, min(width, round(image.width * scale))), max(1, min(height, round(image.height * scale))))
    resized = _resize(image, new, interpolation)
    if new == (width, height):
        return resized
    canvas = Image.new("RGB", (width, height), _fill_colour(mean))
    canvas.paste(resized, ((width - new[0]) // 2, (height - new[1]) // 2))
    return canvas


def select_grid(width: int, height: int, grids: tuple[tuple[int, int], ...], tile: int) -> tuple[int, int]:
    """The ``(rows, cols)`` grid for a ``width x height`` image (LLaVA-NeXT's
    ``select_best_resolution``): most original pixels kept after fitting, then least padding."""
    best = grids[0]
    best_kept, best_waste = -1, float("inf")
    for rows, cols in grids:
        target_w, target_h = cols * tile, rows * tile
        scale = min(target_w / width, target_h / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        waste = target_w * target_h - kept
        if kept > best_kept or (kept == best_kept and waste < best_waste):
            best, best_kept, best_waste = (rows, cols), kept, waste
    return best


class ImageTransform:
    """PIL image -> normalised float tensor ``[3, S, S]`` (or ``[tiles, 3, S, S]`` with tiling)."""

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        resize: ResizeMode = "center_crop",
        interpolation: Interpolation = "bicubic",
        tiling: TilingConfig | None = None,
    ) -> None:
        if image_size < 1:
            raise ConfigError(f"image_size must be >= 1, got {image_size}")
        self.image_size = image_size
        if len(mean) != 3 or len(std) != 3:
            raise ConfigError(f"mean and std need 3 values (R, G, B), got {list(mean)} and {list(std)}")
        self.mean: tuple[float, ...] = tuple(float(m) for m in mean)
        self.std: tuple[float, ...] = tuple(float(s) for s in std)
        self.resize = resize
        self.interpolation = interpolation
        self.tiling = tiling

    def __repr__(self) -> str:
        return (
            f"ImageTransform(image_size={self.image_size}, resize={self.resize!r}, "
            f"interpolation={self.interpolation!r}, mean={self.mean}, std={self.std}, tiling={self.tiling})"
        )

    def square(self, image: Image.Image) -> Image.Image:
        """One ``S x S`` view of the whole image, by the configured resize mode."""
        size = self.image_size
        if self.resize == "stretch":
            return _resize(image, (size, size), self.interpolation)
        if self.resize == "pad":
            side = max(image.size)
            return _resize(
                _fit_and_pad(image, side, side, self.mean, self.interpolation),
                (size, size),
                self.interpolation,
            )
        scale = size / min(image.size)
        new = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
        resized = _resize(image, new, self.interpolation)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        return resized.crop((left, top, left + size, top + size))

    def tiles(self, image: Image.Image) -> list[Image.Image]:
        """The grid tiles of ``image`` (row by row), then the thumbnail if configured."""
        assert self.tiling is not None
        size = self.image_size
        rows, cols = select_grid(image.width, image.height, self.tiling.grid_options, size)
        canvas = _fit_and_pad(image, cols * size, rows * size, self.mean, self.interpolation)
        views = [
            canvas.crop((c * size, r * size, (c + 1) * size, (r + 1) * size))
            for r in range(rows)
            for c in range(cols)
        ]
        if self.tiling.thumbnail and len(views) > 1:
            views.append(self.square(image))
        return views

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """``[3, H, W]`` uint8 pixels. Normalisation happens in the encoder's forward
        (:meth:`normalize`), on its device: a quarter of the bytes to stack, send between
        processes and copy to an accelerator."""
        return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)

    def normalize(self, pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 pixels ``[..., 3, H, W]`` -> ``(pixels / 255 - mean) / std`` in ``dtype``."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
        return ((pixels.float() / 255.0 - mean) / std).to(dtype)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.tiling is None:
            return self.to_tensor(self.square(image))
        return torch.stack([self.to_tensor(view) for view in self.tiles(image)])


# ---------------------------------------------------------------------------- processor


class VisionProcessor(EncoderProcessor):
    """Weight-free preprocessing and token counting of a vision encoder.

    ``probe`` returns ``(tokens_per_tile, out_dim)`` from the config alone (a backend may
    trace its architecture on the meta device); it runs once, on first use, and must be
    picklable (a ``functools.partial`` of a module-level function) for data workers.
    """

    modality = "image"

    def __init__(self, transform: ImageTransform, probe: Callable[[], tuple[int, int]]) -> None:
        self.transform = transform
        self._probe = probe
        self._probed: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"VisionProcessor({self.transform!r})"

    def _shape(self) -> tuple[int, int]:
        if self._probed is None:
            self._probed = self._probe()
        return self._probed

    @property
    def tokens_per_tile(self) -> int:
        """Encoder output tokens of one ``S x S`` view."""
        return self._shape()[0]

    @property
    def out_dim(self) -> int:
        """Feature width of the encoder."""
        return self._shape()[1]

    def preprocess(self, segment: DecodedSegment) -> torch.Tensor:
        """uint8 ``[3, S, S]``, or ``[tiles, 3, S, S]`` with tiling (the encoder normalises)."""
        if segment.image is None:
            raise DataFormatError(
                f"an image encoder got a {segment.kind} segment without an image (member {segment.member!r})"
            )
        return self.transform(segment.image)

    def num_tokens(self, inputs: torch.Tensor) -> int:
        """``tokens_per_tile`` times the item's tiles (1 without tiling)."""
        tiles = 1 if inputs.dim() == 3 else int(inputs.shape[0])
        return tiles * self.tokens_per_tile


# ---------------------------------------------------------------------------- encoder


class VisionEncoder(Encoder):
    """Tile bookkeeping around a backend's ``encode_tiles(pixels [n, 3, S, S]) -> [n, T, D]``."""

    processor: VisionProcessor

    def encode_tiles(self, pixels: torch.Tensor) -> torch.Tensor:
        """Features ``[n, T, D]`` of ``n`` views."""
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 ``inputs`` ``[N, 3, S, S]`` or ``[N, tiles, 3, S, S]`` (tiles zero-padded,
        valid counts in ``sizes``) -> features ``[N, T, D]`` and valid token counts ``[N]``."""
        if inputs.dim() == 4:
            inputs = inputs.unsqueeze(1)
        if inputs.dim() != 5:
            raise DataFormatError(
                f"vision encoder inputs must be [N, 3, S, S] or [N, tiles, 3, S, S], got {list(inputs.shape)}"
            )
        batch, max_tiles = int(inputs.shape[0]), int(inputs.shape[1])
        counts = list(sizes) if sizes else [max_tiles] * batch
        if len(counts) != batch or any(not 1 <= c <= max_tiles for c in counts):
            raise DataFormatError(f"sizes {counts} do not fit {batch} items of at most {max_tiles} tiles")
        dtype = next(self.parameters()).dtype
        if all(c == max_tiles for c in counts):
            pixels = inputs.flatten(0, 1)
        else:  # encode only the valid tiles; padded ones would cost compute and could leak in
            pixels = torch.cat([inputs[i, :c] for i, c in enumerate(counts)])
        features = self.encode_tiles(self.processor.transform.normalize(pixels, dtype))
        tokens = features.shape[1]
        if tokens != self.processor.tokens_per_tile:
            raise RuntimeError(
                f"{type(self).__name__} produced {tokens} tokens per view but its processor counts "
                f"{self.processor.tokens_per_tile}: the config and the built model disagree"
            )
        lengths = torch.tensor([c * tokens for c in counts], device=features.device)
        if pixels.shape[0] == batch * max_tiles:
            return features.reshape(batch, max_tiles * tokens, -1), lengths
        per_item = features.flatten(0, 1).split([c * tokens for c in counts])
        out = features.new_zeros(batch, max(counts) * tokens, features.shape[-1])
        for i, item in enumerate(per_item):
            out[i, : item.shape[0]] = item
        return out, lengths


# ---------------------------------------------------------------------------- weights


def split_pretrained(pretrained: str, key: str) -> Path | None:
    """A local weights path for ``pretrained`` (None when it names a hub id instead).

    Anything that exists, or looks like a path (``/``, ``.``, ``~``), is local and must
    exist; the rest is a hub id, tried only where the hub is reachable.
    """
    path = Path(pretrained).expanduser()
    if path.exists():
        return path
    if pretrained.startswith(("/", ".", "~")):
        raise ConfigError(f"{key}: {pretrained} does not exist; give a local weights file or directory")
    return None


def find_weights_file(directory: Path, preferred: tuple[str, ...], key: str) -> Path:
    """The weights file in ``directory``: the first of ``preferred`` present, else its only
    ``*.safetensors`` / ``*.bin`` / ``*.pt`` / ``*.pth`` file."""
    for name in preferred:
        if (directory / name).is_file():
            return directory / name
    found = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    if len(found) == 1:
        return found[0]
    listed = ", ".join(p.name for p in found) or "none"
    raise ConfigError(
        f"{key}: cannot tell which weights file to load from {directory} (expected one of "
        f"{', '.join(preferred)}; weight files there: {listed}); name the file instead"
    )


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or torch checkpoint (``state_dict``/``model`` keys
    unwrapped, a DDP ``module.`` prefix removed); loaded with ``weights_only``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read weights {path}: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise UserError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path`` (ConfigError naming the file otherwise)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data


def check_feature_layer(layer: int, count: int, key: str, what: str) -> int:
    """``layer`` as an index in ``0..count-1`` (negative counts from the end)."""
    absolute = layer + count if layer < 0 else layer
    if not 0 <= absolute < count:
        raise ConfigError(
            f"{key}: {layer} is out of range; this model has {count} {what} (-{count}..{count - 1})"
        )
    return absolute
