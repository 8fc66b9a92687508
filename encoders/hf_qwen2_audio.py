"""``hf_qwen2_audio``: Qwen2-Audio's audio tower (transformers ``Qwen2AudioEncoder``).

Whisper blocks on the Whisper log-mel front end (:mod:`mmpretrain.encoders.hf_whisper`),
then stride-2 average pooling and a LayerNorm. As in
``Qwen2AudioModel.forward``, a padding mask built from each item's valid mel frames keeps
the blocks from attending to padded positions, and an item of ``L`` valid frames yields
``_get_feat_extract_output_lengths(L)`` tokens: ``(L - 1) // 2 + 1`` after the stride-2
conv, then ``(that - 2) // 2 + 1`` after the pooling. ``L`` is the frame count that
Qwen2AudioProcessor's ``feature_attention_mask`` sums to, so token counts match its
``num_audio_tokens``. With ``linear`` as connector this is the Qwen2-Audio model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, cast

import torch
from pydantic import Field

from mmpretrain.encoders.hf_whisper import (
    HOP_LENGTH,
    WhisperMelProcessor,
    WhisperStyleEncoder,
    fit_mel_window,
    whisper_style_hf_config,
)
from mmpretrain.encoders.speech_common import (
    SpeechEncoderConfig,
    select_feature_layer,
)
from mmpretrain.registry import ENCODERS

if TYPE_CHECKING:
    from transformers import Qwen2AudioEncoderConfig


def qwen2_audio_output_length(frames: int) -> int:
    """``Qwen2AudioEncoder._get_feat_extract_output_lengths``: tokens of ``frames`` mel frames."""
    after_conv = (frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


class HfQwen2AudioConfig(SpeechEncoderConfig):
    """Qwen2-Audio's audio tower (transformers Qwen2AudioEncoder): Whisper blocks, stride-2
    average pooling and a LayerNorm, with a padding mask; 16 kHz audio, 25 tokens/s."""

    name: Literal["hf_qwen2_audio"]
    n_mels: Literal[80, 128] = 128
    """Mel bins (Qwen2-Audio uses 128) (random init)."""
    max_source_positions: int = Field(1500, gt=0)
    """Encoder positions; the input window is 2x this many 10 ms frames (1500 -> 30 s)."""

    def hf_config(self) -> Qwen2AudioEncoderConfig:
        """The transformers Qwen2AudioEncoderConfig: from ``pretrained`` (a tower, or a
        whole Qwen2-Audio model's ``audio_config``) or from the fields above."""
        hf = whisper_style_hf_config(self, "Qwen2AudioEncoderConfig", ["qwen2_audio_encoder"])
        return cast("Qwen2AudioEncoderConfig", hf)

    def processor(self) -> Qwen2AudioMelProcessor:
        """Whisper log-mel features and Qwen2-Audio's token count."""
        hf = self.hf_config()
        return Qwen2AudioMelProcessor(hf.num_mel_bins, hf.max_source_positions, self.sampling_rate)


class Qwen2AudioMelProcessor(WhisperMelProcessor):
    """Whisper log-mel ``[n_mels, frames]``; ``num_tokens`` is
    ``((L - 1) // 2 + 1 - 2) // 2 + 1`` with ``L = min(frames, 2 * max_source_positions)``."""

    min_samples = 2 * HOP_LENGTH + 1
    """Clips under 20 ms are zero-padded to 3 frames, the fewest that give a token."""

    def num_tokens(self, inputs: torch.Tensor) -> int:
        """Qwen2-Audio's ``_get_feat_extract_output_lengths`` of the valid frames."""
        return qwen2_audio_output_length(self.frames(inputs))


class Qwen2AudioSpeechEncoder(WhisperStyleEncoder):
    """transformers Qwen2AudioEncoder: ``forward(mel [N, n_mels, T], sizes) -> ([N, T', D], lengths)``."""

    def __init__(self, config: HfQwen2AudioConfig) -> None:
        super().__init__(config)
        from transformers import Qwen2AudioEncoder

        prefer = ("model.audio_tower.", "audio_tower.", "")
        self.audio_tower = self.build_tower(config, Qwen2AudioEncoder, prefer=prefer)

    def forward(self, inputs: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features of each item's valid tokens, and their count per item."""
        from transformers.masking_utils import create_bidirectional_mask

        tower = self.audio_tower
        weight = tower.conv1.weight
        features, valid = fit_mel_window(inputs.to(weight.device, weight.dtype), sizes, self.window_frames)
        # The padding mask of Qwen2AudioModel.forward: over the conv output positions.
        conv_lengths = (valid - 1) // 2 + 1
        positions = (self.window_frames - 2) // 2 + 1
        mask_2d = (torch.arange(positions) < conv_lengths[:, None]).long().to(weight.device)
        attention_mask = create_bidirectional_mask(
            config=tower.config,
            inputs_embeds=torch.zeros(len(valid), positions, 1, dtype=weight.dtype, device=weight.device),
            attention_mask=mask_2d,
        )
        outputs = tower(
            features, attention_mask=attention_mask, output_hidden_states=self.layer_index is not None
        )
        hidden = select_feature_layer(outputs, self.layer_index)
        if self.layer_index is not None:  # a block's output: pool it like the final one (no LayerNorm)
            hidden = tower.avg_pooler(hidden.transpose(1, 2)).transpose(1, 2)
        lengths = (conv_lengths - 2) // 2 + 1
        return hidden[:, : int(lengths.max())], lengths.to(hidden.device)


ENCODERS.add("hf_qwen2_audio", Qwen2AudioSpeechEncoder, config=HfQwen2AudioConfig)
