"""The ``vq`` image tokenizer: a small VQ-VAE whose code grid becomes LLM tokens.

An image is resized to ``image_size`` (the config's ``resize`` mode), scaled from uint8
to ``[-1, 1]``, encoded by strided convolutions and residual blocks to a grid of
``image_size / downsample`` squared vectors, and each vector is replaced by its nearest
codebook entry. The codes, read row by row, are the image's tokens; the decoder (residual
blocks and transposed convolutions) maps a code grid back to pixels.

The codebook learns in one of two ways (``quantizer``):

- ``ema`` (default): codebook entries are exponential moving averages of the encoder
  outputs assigned to them (VQ-VAE's appendix; Laplace smoothing of the counts keeps an
  unused entry from dividing by zero). No gradient reaches the codebook, only the
  commitment loss pulls the encoder towards it. It is the default because it is stable
  with the high learning rates a tiny tokenizer trains with and it needs no codebook loss
  weight to tune.
- ``straight_through``: the codebook is a parameter trained by the codebook loss
  ``|sg(z) - e|^2`` next to the commitment loss ``beta |z - sg(e)|^2``.

Either way, gradients pass the quantizer straight through (``z + sg(e - z)``), the codebook
starts from encoder outputs of the first training batch, and entries whose moving-average
usage falls below ``dead_code_threshold`` assignments per batch restart at a random
encoder output of the current batch (Jukebox), so few codes stay dead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field, ValidationError, model_validator
from torch import nn

from mmpretrain.config import ComponentConfig, ConfigModel, format_validation_error
from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.errors import ConfigError, UserError
from mmpretrain.registry import TOKENIZERS

from .media_tokenizer import MANIFEST, WEIGHTS, register_media_tokenizer_loader, write_manifest
from .vision_common import ImageTransform, ResizeMode

KIND = "vq"


class VqConfig(ConfigModel):
    """Architecture of the ``vq`` image tokenizer (saved in its ``media_tokenizer.json``)."""

    image_size: int = Field(32, ge=8)
    """Images are resized to ``image_size x image_size`` before encoding."""
    resize: ResizeMode = "center_crop"
    """How a non-square image becomes square: center_crop, stretch, or pad (grey)."""
    downsample: Literal[4, 8] = 4
    """Pixels per code along each side: the grid is ``image_size / downsample`` squared."""
    channels: int = Field(32, ge=4)
    """Width of the convolutions of encoder and decoder."""
    res_blocks: int = Field(1, ge=0)
    """Residual blocks at the code resolution, in the encoder and in the decoder."""
    codebook_size: int = Field(256, ge=2)
    """Number of codes (token ids ``0 .. codebook_size - 1``)."""
    code_dim: int = Field(32, ge=1)
    """Dimension of a codebook vector."""
    quantizer: Literal["ema", "straight_through"] = "ema"
    """Codebook learning: moving averages of assigned encoder outputs, or gradients."""
    commitment_weight: float = Field(0.25, ge=0)
    """beta of the commitment loss ``beta |z - sg(e)|^2``."""
    ema_decay: float = Field(0.9, ge=0, lt=1)
    """ema: decay of the moving averages of code counts and sums (VQ-VAE used 0.99 for
    long runs; a run of a few hundred steps needs a codebook that follows faster)."""
    ema_epsilon: float = Field(1e-5, gt=0)
    """ema: Laplace smoothing of the code counts."""
    dead_code_threshold: float = Field(1.0, ge=0)
    """Codes used less than this many times per batch (moving average) restart at a random
    encoder output of the batch; 0 turns restarts off."""

    @model_validator(mode="after")
    def _check_grid(self) -> VqConfig:
        if self.image_size % self.downsample:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of downsample {self.downsample}"
            )
        return self

    @property
    def grid_size(self) -> int:
        """Codes along each side of an image."""
        return self.image_size // self.downsample


# ---------------------------------------------------------------------------- network


class ResBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(x))))`` (VQ-VAE's residual block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


def _encoder(cfg: VqConfig) -> nn.Sequential:
    c = cfg.channels
    layers: list[nn.Module] = [nn.Conv2d(3, c, 3, padding=1)]
    for _ in range(int(math.log2(cfg.downsample))):
        layers += [nn.ReLU(), nn.Conv2d(c, c, 4, stride=2, padding=1)]
    layers += [ResBlock(c) for _ in range(cfg.res_blocks)]
    layers += [nn.ReLU(), nn.Conv2d(c, cfg.code_dim, 1)]
    return nn.Sequential(*layers)


def _decoder(cfg: VqConfig) -> nn.Sequential:
    c = cfg.channels
    layers: list[nn.Module] = [nn.Conv2d(cfg.code_dim, c, 3, padding=1)]
    layers += [ResBlock(c) for _ in range(cfg.res_blocks)]
    for _ in range(int(math.log2(cfg.downsample))):
        layers += [nn.ReLU(), nn.ConvTranspose2d(c, c, 4, stride=2, padding=1)]
    layers += [nn.ReLU(), nn.Conv2d(c, 3, 3, padding=1)]
    return nn.Sequential(*layers)


@dataclass
class QuantizerOutput:
    """What the quantizer gives back for a batch of encoder outputs ``z [B, D, h, w]``."""

    quantized: torch.Tensor
    """``z + sg(e - z)``: the codebook vectors, with gradients passed straight to ``z``."""
    codes: torch.Tensor
    """``[B, h, w]`` code indices."""
    commitment_loss: torch.Tensor
    """``|z - sg(e)|^2`` (mean; not yet weighted)."""
    codebook_loss: torch.Tensor
    """``|sg(z) - e|^2`` for ``straight_through``; 0 for ``ema``."""
    perplexity: torch.Tensor
    """``exp(entropy)`` of the batch's code histogram: how many codes are in effective use."""


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook with EMA or straight-through learning and code restarts.

    State (all in the state dict): ``embed.weight [K, D]`` the codebook;
    ``cluster_size [K]`` moving-average assignments per batch; ``embed_sum [K, D]``
    moving-average sums of assigned vectors (ema); ``initialized`` whether the codebook
    was set from data yet. Updates happen only in training mode.
    """

    cluster_size: torch.Tensor
    embed_sum: torch.Tensor
    initialized: torch.Tensor

    def __init__(self, cfg: VqConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.codebook_size, cfg.code_dim)
        nn.init.normal_(self.embed.weight)
        self.embed.weight.requires_grad_(cfg.quantizer == "straight_through")
        self.register_buffer("cluster_size", torch.zeros(cfg.codebook_size))
        self.register_buffer("embed_sum", self.embed.weight.detach().clone())
        self.register_buffer("initialized", torch.tensor(False))

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook vector (squared L2) for each row of ``flat [N, D]``."""
        weight = self.embed.weight.detach()
        distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ weight.t() + weight.pow(2).sum(1)[None, :]
        return distances.argmin(1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook vectors ``[B, D, h, w]`` of a code grid ``[B, h, w]``."""
        return self.embed(codes).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        batch, dim, height, width = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, dim)
        if self.training and not bool(self.initialized):
            self._init_from(flat.detach())
        codes = self.nearest(flat.detach())
        chosen = self.embed(codes)
        commitment = F.mse_loss(flat, chosen.detach())
        codebook = (
            F.mse_loss(chosen, flat.detach()) if self.embed.weight.requires_grad else flat.new_zeros(())
        )
        counts = torch.bincount(codes, minlength=self.cfg.codebook_size).to(flat.dtype)
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        if self.training:
            self.update(flat.detach(), codes)
        quantized = flat + (chosen - flat).detach()
        return QuantizerOutput(
            quantized=quantized.view(batch, height, width, dim).permute(0, 3, 1, 2),
            codes=codes.view(batch, height, width),
            commitment_loss=commitment,
            codebook_loss=codebook,
            perplexity=perplexity,
        )

    @torch.no_grad()
    def _init_from(self, flat: torch.Tensor) -> None:
        """Start the codebook at random encoder outputs (data-dependent init)."""
        size = self.cfg.codebook_size
        n = len(flat)
        pick = (
            torch.randperm(n, device=flat.device)[:size]
            if n >= size
            else torch.randint(n, (size,), device=flat.device)
        )
        self.embed.weight.copy_(flat[pick])
        self.embed_sum.copy_(flat[pick])
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        """One training step's codebook update from encoder outputs ``flat [N, D]`` and
        their codes ``[N]``: moving averages (ema: also the codebook), then restarts.

        With decay ``d``, batch counts ``n_k`` and sums ``s_k``:
        ``N_k <- d N_k + (1 - d) n_k``, ``m_k <- d m_k + (1 - d) s_k``,
        ``e_k = m_k / ((N_k + eps) / (sum N + K eps) * sum N)`` (Laplace-smoothed counts).
        """
        cfg = self.cfg
        decay = cfg.ema_decay
        counts = torch.bincount(codes, minlength=cfg.codebook_size).to(flat.dtype)
        self.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        if cfg.quantizer == "ema":
            sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, flat)
            self.embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
            total = self.cluster_size.sum()
            smoothed = (
                (self.cluster_size + cfg.ema_epsilon) / (total + cfg.codebook_size * cfg.ema_epsilon) * total
            )
            self.embed.weight.copy_(self.embed_sum / smoothed[:, None])
        self.restart_dead_codes(flat)

    @torch.no_grad()
    def restart_dead_codes(self, flat: torch.Tensor) -> int:
        """Move codes whose usage is below ``dead_code_threshold`` onto random rows of
        ``flat``; returns how many moved."""
        threshold = self.cfg.dead_code_threshold
        dead = (self.cluster_size < threshold).nonzero().squeeze(1)
        if threshold <= 0 or len(dead) == 0:
            return 0
        picks = flat[torch.randint(len(flat), (len(dead),), device=flat.device)]
        self.embed.weight[dead] = picks
        self.embed_sum[dead] = picks * threshold
        self.cluster_size[dead] = threshold
        return len(dead)


@dataclass
class VqOutput:
    """A training forward pass: reconstruction, codes and losses."""

    reconstruction: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor
    """reconstruction + commitment_weight * commitment + codebook loss."""
    reconstruction_loss: torch.Tensor
    """MSE of pixels in [-1, 1]."""
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor


class VqVae(nn.Module):
    """Conv encoder -> :class:`VectorQuantizer` -> conv decoder, on pixels in ``[-1, 1]``."""

    def __init__(self, cfg: VqConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = _encoder(cfg)
        self.quantizer = VectorQuantizer(cfg)
        self.decoder = _decoder(cfg)

    def forward(self, pixels: torch.Tensor) -> VqOutput:
        q = self.quantizer(self.encoder(pixels))
        reconstruction = self.decoder(q.quantized)
        recon_loss = F.mse_loss(reconstruction, pixels)
        loss = recon_loss + self.cfg.commitment_weight * q.commitment_loss + q.codebook_loss
        return VqOutput(reconstruction, q.codes, loss, recon_loss, q.commitment_loss, q.perplexity)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Code grid ``[B, h, w]`` of pixels ``[B, 3, S, S]`` in ``[-1, 1]``."""
        z = self.encoder(pixels)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        return self.quantizer.nearest(flat).view(z.shape[0], z.shape[2], z.shape[3])

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, S, S]`` (about ``[-1, 1]``, not clamped) of a code grid ``[B, h, w]``."""
        return self.decoder(self.quantizer.lookup(codes))


# ---------------------------------------------------------------------------- tokenizer


class VqTokenizer:
    """:class:`~mmpretrain.encoders.media_tokenizer.MediaTokenizer` of kind ``vq``:
    image -> ``grid_size**2`` codes (row-major) and codes -> image."""

    kind = KIND
    modality = "image"

    def __init__(self, config: VqConfig, model: VqVae | None = None) -> None:
        self.config = config
        self.model = model if model is not None else VqVae(config)
        self.model.eval()
        self.codebook_size = config.codebook_size
        # uint8 -> [-1, 1] is (x / 255 - 0.5) / 0.5
        self.transform = ImageTransform(config.image_size, (0.5,) * 3, (0.5,) * 3, resize=config.resize)

    @property
    def tokens_per_image(self) -> int:
        """Codes of one image (``grid_size ** 2``)."""
        return self.config.grid_size**2

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """``[3, S, S]`` uint8 pixels of ``image`` resized to the tokenizer's size."""
        return self.transform(image)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels ``[..., 3, S, S]`` -> float in ``[-1, 1]`` on the model's device."""
        device = next(self.model.parameters()).device
        return self.transform.normalize(pixels.to(device))

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Code grids ``[B, h, w]`` of uint8 pixels ``[B, 3, S, S]``."""
        return self.model.encode(self.normalize(pixels)).cpu()

    def encode(self, segment: DecodedSegment) -> list[int]:
        """Codes of one decoded image segment, row by row."""
        if segment.kind != "image" or segment.image is None:
            raise UserError(
                f"the vq tokenizer encodes images, got a {segment.kind} segment"
                + (f" ({segment.member})" if segment.member else "")
            )
        return self.encode_pixels(self.pixels(segment.image)[None]).flatten().tolist()

    def decode(self, codes: list[int]) -> Image.Image:
        """The ``image_size x image_size`` RGB image of ``grid_size**2`` codes (row-major)."""
        expected = self.tokens_per_image
        if len(codes) != expected:
            raise UserError(
                f"a vq image has {expected} codes ({self.config.grid_size}x{self.config.grid_size}), "
                f"got {len(codes)}"
            )
        bad = [
            c
            for c in codes
            if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < self.codebook_size
        ]
        if bad:
            raise UserError(f"codes must be integers in [0, {self.codebook_size}); got {bad[0]!r}")
        device = next(self.model.parameters()).device
        grid = torch.tensor(codes, dtype=torch.long, device=device).view(1, self.config.grid_size, -1)
        return to_image(self.model.decode(grid)[0])

    def save(self, directory: Path) -> None:
        """Write ``media_tokenizer.json`` and ``model.safetensors`` into ``directory``."""
        from safetensors.torch import save_file

        write_manifest(
            Path(directory), KIND, self.modality, self.codebook_size, self.config.model_dump(mode="json")
        )
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(Path(directory) / WEIGHTS))


def to_image(pixels: torch.Tensor) -> Image.Image:
    """A ``[3, H, W]`` float tensor in ``[-1, 1]`` (clamped) as an RGB PIL image."""
    uint8 = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(uint8.permute(1, 2, 0).cpu().numpy())


@register_media_tokenizer_loader(KIND)
def load_vq_tokenizer(directory: Path, manifest: dict[str, Any]) -> VqTokenizer:
    """The ``vq`` tokenizer saved in ``directory`` (its manifest already read)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    source = str(directory / MANIFEST)
    data = manifest.get("config")
    try:
        config = VqConfig.model_validate(data if isinstance(data, dict) else {})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, VqConfig, data or {}, source)) from None
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise UserError(f"{directory} has no {WEIGHTS}: the tokenizer directory is incomplete")
    try:
        state = load_file(str(weights))
    except (OSError, SafetensorError) as exc:
        raise UserError(f"{weights} is not a readable safetensors file ({exc})") from None
    model = VqVae(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{weights} does not match the config in {MANIFEST}: {first}") from None
    return VqTokenizer(config, model)


# ---------------------------------------------------------------------------- registry


class VqTokenizerConfig(ComponentConfig):
    """VQ-VAE image tokenizer: image -> code grid (trained by `mmpt tokenizer train --kind vq`)."""

    name: Literal["vq"]
    path: str | None = None
    """Directory written by `mmpt tokenizer train --kind vq` (media_tokenizer.json + model.safetensors)."""


@TOKENIZERS.register(KIND, config=VqTokenizerConfig)
def build_vq_tokenizer(cfg: VqTokenizerConfig) -> VqTokenizer:
    """Load the trained ``vq`` tokenizer directory ``cfg.path``."""
    from .media_tokenizer import load_media_tokenizer

    if cfg.path is None:
        raise ConfigError(
            "tokenizer path is not set for name: vq; train one with `mmpt tokenizer train --kind vq "
            "--config tokenizers/vq_tiny --out DIR` and set path: DIR"
        )
    tokenizer = load_media_tokenizer(cfg.path)
    if not isinstance(tokenizer, VqTokenizer):
        raise ConfigError(f"{cfg.path} holds a {tokenizer.kind!r} media tokenizer, not a vq one")
    return tokenizer
