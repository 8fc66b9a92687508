"""Shared helpers of the export tests (import as `export_helpers`): tiny model configs of
every mapping, media inputs, our logits on one document."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from mmpretrain.config import load_config
from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.data.layout import MediaDocument, MediaItem, MediaTokenIds, layout_batch
from mmpretrain.data.tokenizer import TextTokenizer
from mmpretrain.model.build import build_model, media_processors
from mmpretrain.model.config import ModelConfig
from mmpretrain.model.multimodal import MultimodalLM

QWEN2_AUDIO_TOWER = (
    'model.encoders={"speech": {"name": "hf_qwen2_audio", "n_mels": 80, "max_source_positions": 250, '
    '"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 2}}'
)


def model_config(name: str, *overrides: str) -> ModelConfig:
    """A shipped model config with sdpa attention (export builds with sdpa) and overrides."""
    return load_config(name, ["model.llm.attn_implementation=sdpa", *overrides]).model


def llava_config(tower: str = "hf_siglip", *overrides: str) -> ModelConfig:
    """vlm_tiny (SigLIP + mlp + Llama) or its CLIP variant."""
    extra = [f"model.encoders.vision.name={tower}"] if tower != "hf_siglip" else []
    if tower == "hf_clip":
        extra += ["model.encoders.vision.feature_layer=-2", "model.encoders.vision.select_strategy=default"]
    return model_config("models/vlm_tiny", *extra, *overrides)


def idefics3_config(*overrides: str) -> ModelConfig:
    """SigLIP (last layer + post_layernorm) + pixel_shuffle_mlp (scale 2, one Linear) + Llama."""
    return model_config(
        "models/vlm_tiny",
        "model.encoders.vision.final_norm=true",
        'model.connectors.image={"name": "pixel_shuffle_mlp", "scale_factor": 2}',
        *overrides,
    )


def qwen2_audio_config(*overrides: str) -> ModelConfig:
    """hf_qwen2_audio (5 s window) + linear + Llama."""
    return model_config(
        "models/llama_tiny", QWEN2_AUDIO_TOWER, 'model.connectors={"audio": {"name": "linear"}}', *overrides
    )


def build(cfg: ModelConfig, seed: int = 0) -> MultimodalLM:
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    model.requires_grad_(False)
    return model


def picture(width: int = 32, height: int = 32, seed: int = 1) -> Image.Image:
    image = Image.new("RGB", (width, height), (120, 130, 140))
    ImageDraw.Draw(image).ellipse(
        (2 + seed, 3, width - 5, height - 2 - seed), fill=(200, 40 * seed % 255, 40)
    )
    return image


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * math.pi * hz * t)).astype("float32")


def media_item(cfg: ModelConfig, segment: DecodedSegment) -> MediaItem:
    processor = media_processors(cfg)[segment.kind]
    inputs = processor.preprocess(segment)
    return MediaItem(segment.kind, processor.num_tokens(inputs), inputs)


def image_item(cfg: ModelConfig, image: Image.Image) -> MediaItem:
    return media_item(cfg, DecodedSegment(kind="image", image=image))


def audio_item(cfg: ModelConfig, wave: np.ndarray) -> MediaItem:
    return media_item(cfg, DecodedSegment(kind="audio", audio=wave, sample_rate=16000))


def our_batch(tokenizer: TextTokenizer, parts: Sequence[str | MediaItem]) -> Any:
    """One document (text encoded with ``tokenizer``, media items) laid out as we train."""
    encoded = [tokenizer.encode(p) if isinstance(p, str) else p for p in parts]
    doc = MediaDocument("doc", encoded)
    return layout_batch([[doc]], doc.length, tokenizer.pad_id, MediaTokenIds.from_tokenizer(tokenizer))


def our_logits(model: MultimodalLM, batch: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(batch)


def assert_logits_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """The issue's bar: fp32 logits within 1e-4."""
    assert ours.shape == theirs.shape
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def export(
    model: MultimodalLM, cfg: ModelConfig, tokenizer: TextTokenizer | None, out: Path, **kw: Any
) -> Any:
    """``export_hf_model`` into ``out``; returns (mapping, saved transformers model)."""
    from mmpretrain.export import export_hf_model

    out.mkdir(parents=True, exist_ok=True)
    return export_hf_model(model, cfg, tokenizer, out, kw.get("dtype"), kw.get("max_shard_size", "5GB"))


def pixels(image: MediaItem, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Our uint8 pixels normalised as the encoder does in forward."""
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return (image.inputs.float() / 255 - m) / s


def write_run_dir(
    run_dir: Path, name: str, overrides: Sequence[str], tokenizer_dir: Path, step: int = 3, seed: int = 0
) -> tuple[MultimodalLM, Any]:
    """A run directory as training leaves it (config.yaml, tokenizer/, a committed DCP
    checkpoint written by the checkpoint code) for a model built at random; returns the
    model and the run config."""
    import shutil

    from mmpretrain.config import dump_config
    from mmpretrain.train.checkpoint import save_checkpoint
    from mmpretrain.train.run_dir import config_hash

    cfg = load_config(name, [*overrides, f"data.tokenizer.path={tokenizer_dir}"])
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    shutil.copytree(tokenizer_dir, run_dir / "tokenizer")
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    state = {
        "tokens": 1234 * step,
        "config_hash": config_hash(cfg),
        "sources": {"tokens": {"demo": 1234 * step}},
    }
    save_checkpoint(run_dir, step, model, None, state, keep_last=3)
    model.eval().requires_grad_(False)
    return model, cfg
