"""``hf_qwen2_audio`` + ``linear`` + LLM -> ``Qwen2AudioForConditionalGeneration``.

Our encoder is transformers' ``Qwen2AudioEncoder`` (with the padding mask
``Qwen2AudioModel`` builds), the ``linear`` connector has ``Qwen2AudioMultiModalProjector``'s
``linear``, the LLM is a transformers causal LM (any architecture: Qwen2-Audio builds its
language model with ``AutoModel``).

**Processor.** ``Qwen2AudioProcessor`` with a ``WhisperFeatureExtractor`` whose window is
the tower's (``2 x max_source_positions`` frames; 30 s for released models) and our audio
tokens: placeholder ``<audio>``, begin ``<audio_start>``, end ``<audio_end>``. It repeats
``<audio>`` to ``_get_feat_extract_output_lengths(valid frames)`` copies, our token count,
and the chat template writes each clip as ``<audio_start><audio><audio_end>``, so a prompt
gives our token ids. Its features are the extractor's window-padded log-mel, of which the
valid frames are ours bit for bit; on the same features the logits are ours. For a clip
shorter than the window the extractor's two frames past the clip still hold its STFT tail
where our encoder puts silence (``encoders/hf_whisper.py``): they enter the stride-2
convolutions at the clip's end and move the logits by about 1e-3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmpretrain.data.tokenizer import SPECIAL_TOKENS, TextTokenizer
from mmpretrain.errors import UserError
from mmpretrain.export.hf_llava import config_copy, require_tokenizer, single_encoder
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

HOP_LENGTH = 160


def qwen2_audio_config(model: MultimodalLM, tokenizer: TextTokenizer) -> Any:
    """The Qwen2AudioConfig of our audio tower, projector and LLM."""
    from transformers import Qwen2AudioConfig

    _, encoder = single_encoder(model, "audio")
    text = text_config(model.llm, tokenizer)
    kwargs: dict[str, Any] = {"tie_word_embeddings": bool(text.tie_word_embeddings)}
    return Qwen2AudioConfig(
        audio_config=config_copy(encoder.audio_tower.config),
        text_config=text,
        audio_token_index=tokenizer.audio_id,
        **kwargs,
    )


def feature_extractor(model: MultimodalLM) -> Any:
    """WhisperFeatureExtractor over the tower's window at the encoder's sampling rate."""
    from transformers import WhisperFeatureExtractor

    _, encoder = single_encoder(model, "audio")
    rate = int(encoder.config.sampling_rate)
    samples = int(encoder.window_frames) * HOP_LENGTH
    if samples % rate:
        raise UserError(
            f"the audio tower's window ({encoder.window_frames} frames = {samples / rate} s) is not a whole "
            "number of seconds, which WhisperFeatureExtractor's chunk_length needs (use max_source_positions "
            "that is a multiple of 50)"
        )
    n_mels = int(encoder.audio_tower.config.num_mel_bins)
    return WhisperFeatureExtractor(
        feature_size=n_mels,
        sampling_rate=rate,
        hop_length=HOP_LENGTH,
        chunk_length=samples // rate,
        n_fft=400,
    )


def qwen2_audio_processor(model: MultimodalLM, tokenizer: TextTokenizer) -> Any:
    """Qwen2AudioProcessor with our audio tokens and the chat template."""
    import copy

    from transformers import Qwen2AudioProcessor

    hf_tokenizer = copy.deepcopy(tokenizer.hf)
    hf_tokenizer.chat_template = CHAT_TEMPLATE
    return Qwen2AudioProcessor(
        feature_extractor=feature_extractor(model),
        tokenizer=hf_tokenizer,
        chat_template=CHAT_TEMPLATE,
        audio_token=SPECIAL_TOKENS.audio,
        audio_bos_token=SPECIAL_TOKENS.audio_start,
        audio_eos_token=SPECIAL_TOKENS.audio_end,
    )


def export_qwen2_audio(
    model: MultimodalLM,
    tokenizer: TextTokenizer | None,
    out: Path,
    dtype: torch.dtype | None,
    max_shard_size: int | str,
) -> Any:
    """Write ``Qwen2AudioForConditionalGeneration`` + processor into ``out``."""
    from transformers import Qwen2AudioForConditionalGeneration

    tokenizer = require_tokenizer(tokenizer, "a Qwen2-Audio model")
    processor = qwen2_audio_processor(model, tokenizer)  # fails early on an unsupported window
    hf = instantiate(Qwen2AudioForConditionalGeneration, qwen2_audio_config(model, tokenizer))
    _, encoder = single_encoder(model, "audio")
    pairs = [
        ModulePair(encoder.audio_tower, hf.model.audio_tower, "audio tower"),
        ModulePair(model.connectors["audio"], hf.model.multi_modal_projector, "linear connector"),
        *llm_pairs(model, hf),
    ]
    load_pairs(hf, pairs)
    hf = cast(hf, dtype)
    save_model(hf, out, max_shard_size)
    processor.save_pretrained(str(out))
    save_generation_config(out, tokenizer)
    return hf
