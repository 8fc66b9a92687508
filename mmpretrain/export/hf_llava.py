"""``hf_clip``/``hf_siglip`` + ``mlp`` + LLM -> ``LlavaForConditionalGeneration``.

Our parts are Llava's own modules: the tower is the unmodified transformers vision model,
the ``mlp`` connector has ``LlavaMultiModalProjector``'s ``linear_1``/``linear_2``, the LLM
is a transformers causal LM. ``vision_feature_layer`` is our ``feature_layer`` (same
``hidden_states`` indexing); ``vision_feature_select_strategy`` is ours for CLIP (``default``
drops the class token) and ``full`` for SigLIP (no class token: transformers' ``default``
would drop a patch).

**Image tokens.** We place ``<image_start> + N x <image> + <image_end>`` per image; LLaVA's
processor only repeats ``<image>`` N times where a prompt has ``<image>``. The export
therefore writes the begin/end markers as literal text of the chat template (an image is
``<image_start><image><image_end>``), and a prompt written the same way gives exactly our
token ids: ``AutoProcessor`` expands the ``<image>`` between the markers. The image
processor is ``LlavaImageProcessor`` set to our transform (``center_crop``: shortest edge
then centre crop; ``stretch``: resize to S x S; ``pad``: pad to a square with the mean
colour, then resize).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from mmpretrain.data.tokenizer import SPECIAL_TOKENS, TextTokenizer
from mmpretrain.errors import UserError
from mmpretrain.export.hf_text import (
    CHAT_TEMPLATE,
    ModulePair,
    cast,
    instantiate,
    llm_pairs,
    load_pairs,
    save_generation_config,
    save_model,
    text_config,
)
from mmpretrain.model.multimodal import MultimodalLM

RESAMPLE = {"bicubic": 3, "bilinear": 2}  # PIL / transformers PILImageResampling values


def single_encoder(model: MultimodalLM, modality: str) -> tuple[str, Any]:
    """The model's one encoder of ``modality`` (the mapping checked there is one)."""
    names = [name for name, enc in model.encoders.items() if enc.modality == modality]
    if len(names) != 1:
        raise UserError(f"expected one {modality} encoder, found {names}")
    return names[0], model.encoders[names[0]]


def require_tokenizer(tokenizer: TextTokenizer | None, what: str) -> TextTokenizer:
    """Media exports need the token ids of the placeholders: the run's tokenizer."""
    if tokenizer is None:
        raise UserError(
            f"exporting {what} needs the run's tokenizer (its media token ids): none was found in the run "
            "directory (tokenizer/) or at data.tokenizer.path"
        )
    return tokenizer


def config_copy(config: Any) -> Any:
    """A fresh copy of a transformers sub-config (no attention-implementation state)."""
    data = copy.deepcopy(config.to_dict())
    data.pop("_attn_implementation", None)
    return type(config).from_dict(data)


def vision_tokens(encoder: Any) -> int:
    """Tokens one image gives (``(S / patch)^2``, + 1 for a kept class token)."""
    from mmpretrain.encoders.hf_vision import _probe

    return int(_probe(encoder.config)[0])


def transform_settings(encoder: Any) -> dict[str, Any]:
    """Our encoder's image transform as image-processor keyword arguments."""
    from mmpretrain.encoders.hf_vision import resolve_hf_vision

    cfg = encoder.config
    arch = resolve_hf_vision(cfg)
    size = arch.image_size
    square = {"height": size, "width": size}
    common: dict[str, Any] = {
        "image_mean": list(cfg.mean or arch.mean),
        "image_std": list(cfg.std or arch.std),
        "resample": RESAMPLE[cfg.interpolation],
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "crop_size": square,
    }
    if cfg.resize == "stretch":
        return {**common, "do_resize": True, "size": square, "do_center_crop": False, "do_pad": False}
    shortest = {"shortest_edge": size}
    pad = cfg.resize == "pad"
    return {**common, "do_resize": True, "size": shortest, "do_center_crop": True, "do_pad": pad}


def llava_config(model: MultimodalLM, tokenizer: TextTokenizer) -> Any:
    """The LlavaConfig of our tower, connector and LLM."""
    from transformers import LlavaConfig

    _, encoder = single_encoder(model, "image")
    connector: Any = model.connectors["image"]
    strategy: Any = encoder.config.select_strategy if encoder.config.name == "hf_clip" else "full"
    text = text_config(model.llm, tokenizer)
    return LlavaConfig(
        vision_config=config_copy(encoder.vision_tower.config),
        text_config=text,
        image_token_index=tokenizer.image_id,
        image_seq_length=vision_tokens(encoder),
        projector_hidden_act="gelu",
        vision_feature_select_strategy=strategy,
        vision_feature_layer=int(encoder.config.feature_layer),
        multimodal_projector_bias=bool(connector.config.bias),
        tie_word_embeddings=bool(text.tie_word_embeddings),
    )


def llava_processor(model: MultimodalLM, tokenizer: TextTokenizer) -> Any:
    """LlavaProcessor (our image transform, our tokenizer, the chat template)."""
    from transformers import LlavaImageProcessor, LlavaProcessor

    _, encoder = single_encoder(model, "image")
    cfg = encoder.config
    hf_tokenizer = copy.deepcopy(tokenizer.hf)
    hf_tokenizer.chat_template = CHAT_TEMPLATE
    return LlavaProcessor(
        image_processor=LlavaImageProcessor(**transform_settings(encoder)),
        tokenizer=hf_tokenizer,
        patch_size=int(encoder.vision_tower.config.patch_size),
        vision_feature_select_strategy=cfg.select_strategy if cfg.name == "hf_clip" else "full",
        chat_template=CHAT_TEMPLATE,
        image_token=SPECIAL_TOKENS.image,
        num_additional_image_tokens=1 if cfg.name == "hf_clip" else 0,
    )


def export_llava(
    model: MultimodalLM,
    tokenizer: TextTokenizer | None,
    out: Path,
    dtype: torch.dtype | None,
    max_shard_size: int | str,
) -> Any:
    """Write ``LlavaForConditionalGeneration`` + processor into ``out``; returns the model."""
    from transformers import LlavaForConditionalGeneration

    tokenizer = require_tokenizer(tokenizer, "a Llava model")
    hf = instantiate(LlavaForConditionalGeneration, llava_config(model, tokenizer))
    _, encoder = single_encoder(model, "image")
    pairs = [
        ModulePair(encoder.vision_tower, hf.model.vision_tower, "vision tower"),
        ModulePair(model.connectors["image"], hf.model.multi_modal_projector, "mlp connector"),
        *llm_pairs(model, hf),
    ]
    load_pairs(hf, pairs)
    hf = cast(hf, dtype)
    save_model(hf, out, max_shard_size)
    llava_processor(model, tokenizer).save_pretrained(str(out))
    save_generation_config(out, tokenizer)
    return hf
