"""Training of the ``vq`` image tokenizer: a small loop over image segments of shards.

The images (resized to the tokenizer's size, uint8) are held in memory, at most
``data.max_images`` of them: this trains a tiny tokenizer, not a production one. The loop
reuses the LM trainer's helpers (AdamW parameter groups, learning-rate schedule, metrics
logger, checkpoints) and writes into the output directory:

- ``config.yaml`` (resolved), ``metrics.jsonl`` and ``tb/`` (per logged step),
  ``checkpoints/step_NNNNNNN/`` (model, optimizer, RNG; the LM trainer's format);
- at the end the tokenizer itself (``media_tokenizer.json`` + ``model.safetensors``),
  ``eval.json`` (reconstruction error on held-out images before and after training) and
  ``sample_codes.json`` / ``sample_original.png`` (one held-out image and its codes, for
  ``mmpt tokenizer decode``).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from mmpretrain.config import ConfigModel, dump_config
from mmpretrain.encoders.media_tokenizer import MANIFEST, WEIGHTS
from mmpretrain.encoders.vq import VqConfig, VqTokenizer, VqVae, to_image
from mmpretrain.errors import UserError
from mmpretrain.train.config import OptimConfig

EVAL_FILE = "eval.json"
SAMPLE_CODES = "sample_codes.json"
SAMPLE_IMAGE = "sample_original.png"
EVAL_BATCH = 64
OUTPUT_FILES = ("config.yaml", "metrics.jsonl", EVAL_FILE, SAMPLE_CODES, SAMPLE_IMAGE, MANIFEST, WEIGHTS)
OUTPUT_DIRS = ("checkpoints", "tb")


class VqDataConfig(ConfigModel):
    """Which images train and which evaluate (the training shards are `--input`)."""

    heldout: str | None = None
    """Held-out shards for the reconstruction report; default: `heldout/shard-*.tar` next to
    the first input shard if there is such a split (the demo data has one), otherwise the
    last `heldout_images` images of the input are kept out of training."""
    max_images: int = Field(20000, ge=1)
    """Read at most this many training images (they are held in memory)."""
    heldout_images: int = Field(64, ge=1)
    """Images in the reconstruction report."""


class VqLoopConfig(ConfigModel):
    """The training loop."""

    steps: int = Field(600, ge=1)
    """Optimizer steps."""
    batch_size: int = Field(32, ge=1)
    """Images per step (drawn without replacement, reshuffled every epoch)."""
    seed: int = 0
    """Seeds initialisation, shuffling and code restarts."""
    grad_clip: float = Field(1.0, ge=0)
    """Clip the gradient norm to this (0 = no clipping)."""
    log_every: int = Field(50, ge=1)
    """Log metrics every N steps (and at the last step)."""
    save_every: int = Field(0, ge=0)
    """Checkpoint every N steps (0 = only at the end)."""
    keep_last: int = Field(1, ge=1)
    """Committed checkpoints to keep."""
    tensorboard: bool = True
    """Also write TensorBoard scalars into tb/."""


class VqTrainConfig(ConfigModel):
    """`mmpt tokenizer train --kind vq --config FILE`: model, data, loop and optimizer."""

    model: VqConfig = VqConfig()
    data: VqDataConfig = VqDataConfig()
    train: VqLoopConfig = VqLoopConfig()
    optim: OptimConfig = OptimConfig(lr=2e-3, weight_decay=0.0, betas=(0.9, 0.99), warmup_steps=20)


@dataclass
class VqTrainResult:
    """What a finished run reports."""

    steps: int
    seconds: float
    train_images: int
    evaluation: dict[str, Any]


# ---------------------------------------------------------------------------- data


def prepare_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse a file or a non-empty directory as ``--out`` unless ``overwrite``, which removes
    what an earlier vq run wrote there (and nothing else)."""

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--out {out} is not empty; pass --overwrite to replace its tokenizer files")
        for name in OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)
        for name in OUTPUT_DIRS:
            shutil.rmtree(out / name, ignore_errors=True)


def read_images(pattern: str, tokenizer: VqTokenizer, limit: int) -> tuple[torch.Tensor, int]:
    """Up to ``limit`` image segments of the shards ``pattern`` as uint8 ``[N, 3, S, S]``
    (resized by the tokenizer), in shard order; also the number of skipped samples."""
    from mmpretrain.data.decoders import DecodeError, decode_sample
    from mmpretrain.data.error_budget import SkipEvent
    from mmpretrain.data.shard_stream import expand_shards, shard_outcomes

    images: list[torch.Tensor] = []
    skipped = 0
    for shard in expand_shards(pattern):
        for _, outcome in shard_outcomes(shard):
            if isinstance(outcome, SkipEvent):
                skipped += 1
                continue
            try:
                sample = decode_sample(outcome)
            except DecodeError:
                skipped += 1
                continue
            for segment in sample.segments:
                if segment.image is not None:
                    images.append(tokenizer.pixels(segment.image))
                if len(images) >= limit:
                    return torch.stack(images), skipped
    if not images:
        raise UserError(f"{pattern} holds no image segments ({skipped} samples skipped); give image shards")
    return torch.stack(images), skipped


def default_heldout(pattern: str) -> str | None:
    """``heldout/shard-*.tar`` beside the first shard of ``pattern``, if that split exists."""
    from mmpretrain.data.shard_stream import expand_shards, is_url

    first = expand_shards(pattern)[0]
    if is_url(first):
        return None
    candidate = Path(first).parent / "heldout"
    return str(candidate / "shard-*.tar") if any(candidate.glob("shard-*.tar")) else None


def batches(images: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless batches: each epoch a fresh permutation (from ``seed`` and the epoch)."""
    generator = torch.Generator().manual_seed(seed)
    size = min(batch_size, len(images))
    while True:
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order) - size + 1, size):
            yield images[order[start : start + size]]


# ---------------------------------------------------------------------------- evaluation


@torch.no_grad()
def reconstruction_report(tokenizer: VqTokenizer, images: torch.Tensor) -> dict[str, float | int]:
    """Encode and decode ``images`` (uint8 ``[N, 3, S, S]``): MSE of pixels in ``[0, 1]``
    (the reconstruction clamped), PSNR and the number of distinct codes used."""
    model = tokenizer.model
    was_training = model.training
    model.eval()
    squared, pixels, used = 0.0, 0, torch.zeros(tokenizer.codebook_size, dtype=torch.bool)
    for start in range(0, len(images), EVAL_BATCH):
        target = tokenizer.normalize(images[start : start + EVAL_BATCH])
        codes = model.encode(target)
        recon = model.decode(codes).clamp(-1, 1)
        squared += float(((recon - target) / 2).pow(2).sum())  # /2: [-1, 1] -> [0, 1] scale
        pixels += target.numel()
        used[codes.flatten().cpu()] = True
    model.train(was_training)
    mse = squared / pixels
    return {"mse": mse, "psnr_db": -10 * math.log10(max(mse, 1e-12)), "codes_used": int(used.sum())}


# ---------------------------------------------------------------------------- loop


def train_vq(cfg: VqTrainConfig, shards: str, out: Path, log: Callable[[str], None] = print) -> VqTrainResult:
    """Train the tokenizer of ``cfg`` on the images of ``shards``; write everything into ``out``."""
    from mmpretrain.train.checkpoint import save_checkpoint
    from mmpretrain.train.metrics import MetricsLogger
    from mmpretrain.train.optim import build_optimizer
    from mmpretrain.train.schedule import lr_at

    torch.manual_seed(cfg.train.seed)
    tokenizer = VqTokenizer(cfg.model)
    model: VqVae = tokenizer.model
    log(f"vq: reading up to {cfg.data.max_images} images from {shards}")
    images, skipped = read_images(shards, tokenizer, cfg.data.max_images)
    heldout_pattern = cfg.data.heldout or default_heldout(shards)
    if heldout_pattern is not None:
        heldout, _ = read_images(heldout_pattern, tokenizer, cfg.data.heldout_images)
        heldout_source = heldout_pattern
    else:
        if len(images) <= cfg.data.heldout_images:
            raise UserError(
                f"{shards} has {len(images)} images: too few to keep {cfg.data.heldout_images} out "
                "for evaluation; lower data.heldout_images or set data.heldout"
            )
        images, heldout = images[: -cfg.data.heldout_images], images[-cfg.data.heldout_images :]
        heldout_source = f"last {len(heldout)} images of {shards}"
    log(
        f"vq: {len(images)} training images ({skipped} samples skipped), {len(heldout)} held-out "
        f"({heldout_source}); {sum(p.numel() for p in model.parameters()):,} parameters"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    before = reconstruction_report(tokenizer, heldout)

    model.train()
    optimizer = build_optimizer(model, cfg.optim)
    stream = batches(images, cfg.train.batch_size, cfg.train.seed)
    steps = cfg.train.steps
    started = time.perf_counter()
    with MetricsLogger(out, steps, 0, tensorboard=cfg.train.tensorboard) as logger:
        for step in range(1, steps + 1):
            lr = lr_at(step - 1, cfg.optim, steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            result = model(tokenizer.normalize(next(stream)))
            optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            limit = cfg.train.grad_clip if cfg.train.grad_clip > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), limit))
            optimizer.step()
            if step % cfg.train.log_every == 0 or step == steps:
                elapsed = time.perf_counter() - started
                logger.log(
                    {
                        "step": step,
                        "loss": result.loss.item(),
                        "reconstruction_mse": result.reconstruction_loss.item() / 4,  # [0, 1] scale
                        "commitment": result.commitment_loss.item(),
                        "perplexity": float(result.perplexity),
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "images_per_s": step * cfg.train.batch_size / elapsed,
                    }
                )
            else:
                logger.advance(step)
            if (cfg.train.save_every and step % cfg.train.save_every == 0) or step == steps:
                state = {"config": cfg.model_dump(mode="json")}
                save_checkpoint(out, step, model, optimizer, state, cfg.train.keep_last)
    seconds = time.perf_counter() - started

    model.eval()
    after = reconstruction_report(tokenizer, heldout)
    tokenizer.save(out)
    evaluation = {
        "metric": "mean squared error of pixels in [0, 1] after encode -> decode (clamped)",
        "heldout": {"source": heldout_source, "images": len(heldout)},
        "before": before,
        "after": after,
        "steps": steps,
        "train_images": len(images),
        "train_seconds": round(seconds, 2),
    }
    (out / EVAL_FILE).write_text(json.dumps(evaluation, indent=2) + "\n", encoding="utf-8")
    sample_codes = tokenizer.encode_pixels(heldout[:1]).flatten().tolist()
    to_image(tokenizer.normalize(heldout[0])).save(out / SAMPLE_IMAGE)
    grid = [cfg.model.grid_size, cfg.model.grid_size]
    (out / SAMPLE_CODES).write_text(
        json.dumps({"codes": sample_codes, "grid": grid, "image": SAMPLE_IMAGE}) + "\n", encoding="utf-8"
    )
    return VqTrainResult(steps, seconds, len(images), evaluation)
