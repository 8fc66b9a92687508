"""``hf_siglip`` + ``pixel_shuffle_mlp`` (one bias-free Linear) + LLM ->
``Idefics3ForConditionalGeneration``.

Idefics3's vision model is SigLIP's transformer (same parameter names) whose last hidden
state goes through ``post_layernorm``: ours must take ``feature_layer: -1`` with
``final_norm: true``. Its connector is our ``pixel_shuffle_mlp`` with ``hidden_layers: 0,
bias: false`` (``modality_projection.proj``, same pixel-shuffle order), ``scale_factor``
carried over. With full-size images (no pixel padding) Idefics3's position ids are the
plain ``0..N-1`` of SigLIP.

**Processor.** transformers' ``Idefics3Processor`` writes a fixed prompt layout
(``<fake_token_around_image><global-img>`` + N x ``<image>`` + ``<fake_token_around_image>``,
tokens it adds itself), which is not ours (``<image_start>`` + N x ``<image>`` +
``<image_end>``), so no processor is written: the export holds the tokenizer (with the chat
template, whose images read ``<image_start><image><image_end>``) and an
``Idefics3ImageProcessor`` without image splitting, resizing to the tower's S x S. Expand
each ``<image>`` to ``image_seq_len`` copies (``config.json``: ``(S / patch)^2 / scale^2``)
before tokenizing, and pass ``pixel_values`` as ``[batch, images, 3, S, S]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmpretrain.data.tokenizer import TextTokenizer
from mmpretrain.export.hf_llava import RESAMPLE, require_tokenizer, single_encoder
from mmpretrain.export.hf_text import (
    ModulePair,
    cast,
    instantiate,
    llm_pairs,
    load_pairs,
    save_generation_config,
    save_model,
    save_tokenizer,
    text_config,
)
from mmpretrain.model.multimodal import MultimodalLM

VISION_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "hidden_act",
    "layer_norm_eps",
    "attention_dropout",
)
"""The SigLIP vision config fields Idefics3VisionConfig shares."""


def idefics3_config(model: MultimodalLM, tokenizer: TextTokenizer) -> Any:
    """The Idefics3Config of our SigLIP tower, pixel-shuffle connector and LLM."""
    from transformers import Idefics3Config, Idefics3VisionConfig

    _, encoder = single_encoder(model, "image")
    siglip = encoder.vision_tower.config
    vision = Idefics3VisionConfig(
        **{name: getattr(siglip, name) for name in VISION_FIELDS if hasattr(siglip, name)}
    )
    text = text_config(model.llm, tokenizer)
    connector: Any = model.connectors["image"]
    kwargs: dict[str, Any] = {"pad_token_id": tokenizer.pad_id}
    return Idefics3Config(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.image_id,
        scale_factor=int(connector.config.scale_factor),
        tie_word_embeddings=bool(text.tie_word_embeddings),
        **kwargs,
    )


def image_seq_len(model: MultimodalLM) -> int:
    """LLM tokens per image: ``(S / patch)^2 / scale^2``."""
    _, encoder = single_encoder(model, "image")
    siglip = encoder.vision_tower.config
    connector: Any = model.connectors["image"]
    scale = int(connector.config.scale_factor)
    return int((siglip.image_size // siglip.patch_size) ** 2 // scale**2)


def idefics3_image_processor(model: MultimodalLM) -> Any:
    """Idefics3ImageProcessor resizing to the tower's S x S, one view per image."""
    from transformers import Idefics3ImageProcessor

    from mmpretrain.export.hf_llava import transform_settings

    _, encoder = single_encoder(model, "image")
    settings = transform_settings(encoder)
    size = int(encoder.vision_tower.config.image_size)
    return Idefics3ImageProcessor(
        do_resize=True,
        size={"longest_edge": size},
        max_image_size={"longest_edge": size},
        do_image_splitting=False,
        resample=RESAMPLE[encoder.config.interpolation],
        image_mean=settings["image_mean"],
        image_std=settings["image_std"],
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        do_pad=True,
        do_convert_rgb=True,
    )


def export_idefics3(
    model: MultimodalLM,
    tokenizer: TextTokenizer | None,
    out: Path,
    dtype: torch.dtype | None,
    max_shard_size: int | str,
) -> Any:
    """Write ``Idefics3ForConditionalGeneration`` + tokenizer + image processor into ``out``."""
    from transformers import Idefics3ForConditionalGeneration

    tokenizer = require_tokenizer(tokenizer, "an Idefics3 model")
    hf = instantiate(Idefics3ForConditionalGeneration, idefics3_config(model, tokenizer))
    _, encoder = single_encoder(model, "image")
    pairs = [
        ModulePair(encoder.vision_tower, hf.model.vision_model, "vision tower"),
        ModulePair(model.connectors["image"], hf.model.connector, "pixel-shuffle connector"),
        *llm_pairs(model, hf),
    ]
    load_pairs(hf, pairs)
    hf = cast(hf, dtype)
    save_model(hf, out, max_shard_size)
    save_tokenizer(tokenizer, out)
    idefics3_image_processor(model).save_pretrained(str(out))
    save_generation_config(out, tokenizer)
    return hf
