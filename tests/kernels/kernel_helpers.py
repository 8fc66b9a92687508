"""Shared helpers for the kernel tests (import as `kernel_helpers`): tiny models from the
shipped configs (text-only llama_tiny, vlm_tiny) with kernel rules, fixed batches, steps."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image, ImageDraw

from mmpretrain.config import load_config
from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.data.layout import MediaDocument, MediaItem, MediaTokenIds, Part, layout_batch
from mmpretrain.data.types import PackedBatch
from mmpretrain.kernels import kernels_on_step
from mmpretrain.model.build import build_model, media_processors
from mmpretrain.model.multimodal import MultimodalLM
from mmpretrain.model.packed import token_loss_sum

IDS = MediaTokenIds(placeholder={"image": 2000}, begin={"image": 2002}, end={"image": 2004})
PAD = 2006


def model_config(name: str, rules: list[dict[str, Any]] | None = None, **llm: Any) -> Any:
    """``configs/models/<name>`` with ``model.kernels`` set to ``rules``."""
    cfg = load_config(f"models/{name}").model
    data = cfg.model_dump(mode="json")
    data["kernels"] = rules or []
    data["llm"].update(llm)
    return type(cfg).model_validate(data)


def text(n: int, start: int) -> list[int]:
    return [(start + 7 * i) % 1900 + 1 for i in range(n)]


def text_batch(seq_len: int = 32, rows: int = 2) -> PackedBatch:
    """Fixed text-only documents: repeated patterns a tiny model learns in a few steps."""
    docs = [
        [MediaDocument(f"r{r}d{d}", [text(seq_len // 2, r * 3 + d)]) for d in range(2)] for r in range(rows)
    ]
    return layout_batch(docs, seq_len, PAD)


def picture(seed: int) -> DecodedSegment:
    image = Image.new("RGB", (48, 48), (128, 128, 128))
    ImageDraw.Draw(image).ellipse((4 + seed, 8, 40, 40), fill=(200, 40 * seed % 255, 40))
    return DecodedSegment(kind="image", image=image)


def vlm_batch(cfg: Any, seq_len: int = 48) -> PackedBatch:
    """Two rows of image-text documents for a model with an image encoder."""
    processor = media_processors(cfg)["image"]

    def item(seed: int) -> MediaItem:
        inputs = processor.preprocess(picture(seed))
        return MediaItem("image", processor.num_tokens(inputs), inputs)

    parts: list[list[Part]] = [[text(4, 1), item(1), text(8, 2)], [item(2), text(12, 3)]]
    return layout_batch([[MediaDocument(f"doc{i}", p)] for i, p in enumerate(parts)], seq_len, PAD, IDS)


def loss_of(model: MultimodalLM, batch: PackedBatch) -> torch.Tensor:
    logits = model(batch)
    loss_sum, count = token_loss_sum(logits, batch.labels)
    return loss_sum / max(count, 1)


def train_steps(model: MultimodalLM, batch: PackedBatch, steps: int, lr: float = 3e-3) -> list[float]:
    """``steps`` AdamW steps on one batch, with the kinds' ``on_step`` after each; the losses."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    model.train()
    for step in range(1, steps + 1):
        loss = loss_of(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        kernels_on_step(model, step)
        losses.append(loss.item())
    return losses


def build(name: str, rules: list[dict[str, Any]] | None = None) -> MultimodalLM:
    return build_model(model_config(name, rules))
