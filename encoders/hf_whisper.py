"""``hf_whisper``: the transformers Whisper encoder, and the log-mel front end it shares
with ``hf_qwen2_audio``.

Features are exactly what ``transformers.WhisperFeatureExtractor`` computes (its code is
called), kept for the clip's true length: ``preprocess`` returns ``[n_mels, frames]`` with
``frames = min(ceil(samples / 160), window)``, the frames the extractor's attention mask
marks valid, where ``window = 2 * max_source_positions`` (3000 frames = 30 s for released
models). Those frames are bit-for-bit the first ``frames`` columns of the extractor's
window-padded output, because the extractor runs on the clip zero-padded far enough
(``frames * 160 + 800`` samples) that every STFT window touching the audio, and the
log-mel's per-clip maximum, are the same as with the full window.

The transformers encoder only accepts exactly ``window`` frames. ``forward`` crops or
pads each item to it; padded frames get the value that the extractor's silence padding
has (``max(-1.5, peak - 2)``: the log-mel floor of that clip) rather than the pipeline's
zeros. The encoder attends to the whole window (Whisper has no padding mask), its stride-2
conv halves the frames, and each item keeps ``ceil(frames / 2)`` output frames: the rest
is dropped by tracked length. Two approximations of the extractor's padded window remain:
the two frames just after the valid ones, which there still hold the STFT tail of the
clip's last <= 12.5 ms, are silence here, and the silence value comes from the peak of
the valid frames (a louder tail frame would have set it there).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field

from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.encoders.base import Encoder
from mmpretrain.encoders.speech_common import (
    SpeechEncoderConfig,
    SpeechProcessor,
    check_feature_layer,
    hidden_state_index,
    load_hf_config,
    load_tower_weights,
    local_model_dir,
    segment_waveform,
    select_feature_layer,
)
from mmpretrain.errors import DataFormatError
from mmpretrain.registry import ENCODERS

if TYPE_CHECKING:
    from transformers import WhisperConfig

HOP_LENGTH = 160
"""Samples per mel frame at 16 kHz (10 ms), as WhisperFeatureExtractor."""
N_FFT = 400
"""STFT window (25 ms), as WhisperFeatureExtractor."""


def whisper_style_hf_config(cfg: Any, class_name: str, model_types: list[str]) -> Any:
    """A transformers config of Whisper-shaped encoder blocks (Whisper, Qwen2-Audio's
    tower): loaded from ``cfg.pretrained`` or built from ``cfg``'s size fields."""
    if cfg.pretrained is not None:
        return load_hf_config(cfg.pretrained, cfg.name, model_types)
    import transformers

    return getattr(transformers, class_name)(
        num_mel_bins=cfg.n_mels,
        d_model=cfg.hidden_size,
        encoder_layers=cfg.num_layers,
        encoder_attention_heads=cfg.num_heads,
        encoder_ffn_dim=cfg.intermediate_size,
        max_source_positions=cfg.max_source_positions,
    )


class HfWhisperConfig(SpeechEncoderConfig):
    """Whisper encoder (transformers WhisperEncoder) on log-mel features of 16 kHz audio."""

    name: Literal["hf_whisper"]
    n_mels: Literal[80, 128] = 80
    """Mel bins (80; 128 for large-v3) (random init)."""
    max_source_positions: int = Field(1500, gt=0)
    """Encoder positions; the input window is 2x this many 10 ms frames (1500 -> 30 s)."""

    def hf_config(self) -> WhisperConfig:
        """The transformers WhisperConfig: from ``pretrained`` or from the fields above."""
        return cast("WhisperConfig", whisper_style_hf_config(self, "WhisperConfig", ["whisper"]))

    def processor(self) -> WhisperMelProcessor:
        """Log-mel features and ``ceil(frames / 2)`` tokens."""
        hf = self.hf_config()
        return WhisperMelProcessor(hf.num_mel_bins, hf.max_source_positions, self.sampling_rate)


class WhisperMelProcessor(SpeechProcessor):
    """``preprocess``: log-mel ``[n_mels, frames]`` for the clip (WhisperFeatureExtractor's
    values, cropped to the window); ``num_tokens = ceil(min(frames, window) / 2)``."""

    min_samples = 1
    """Shorter clips are zero-padded to this many samples (one frame gives one token)."""

    def __init__(self, n_mels: int, max_source_positions: int, sampling_rate: int = 16000) -> None:
        from transformers import WhisperFeatureExtractor

        self.n_mels = n_mels
        self.window_frames = 2 * max_source_positions
        self.sampling_rate = sampling_rate
        self.extractor = WhisperFeatureExtractor(
            feature_size=n_mels, sampling_rate=sampling_rate, hop_length=HOP_LENGTH, n_fft=N_FFT
        )

    def mel_features(self, wave: Any) -> torch.Tensor:
        """``[n_mels, frames]`` float32 log-mel of a mono waveform at ``sampling_rate``:
        the first ``frames = min(ceil(len / 160), window)`` columns of
        ``WhisperFeatureExtractor(wave, padding="max_length", max_length=window * 160)``."""
        frames = min(math.ceil(len(wave) / HOP_LENGTH), self.window_frames)
        # Zero-padding to this length leaves every STFT window that touches the clip, and
        # the clip's log-mel maximum, as they are with the whole window (see module doc).
        padded = min(self.window_frames * HOP_LENGTH, frames * HOP_LENGTH + 2 * N_FFT)
        out = self.extractor(
            wave,
            sampling_rate=self.sampling_rate,
            padding="max_length",
            max_length=padded,
            truncation=True,
            return_tensors="np",
        )["input_features"][0]
        return torch.from_numpy(out[:, :frames].copy())

    def preprocess(self, segment: DecodedSegment) -> torch.Tensor:
        """Mono, resampled to ``sampling_rate``, log-mel ``[n_mels, frames]``."""
        return self.mel_features(segment_waveform(segment, self.sampling_rate, self.min_samples))

    def frames(self, inputs: torch.Tensor) -> int:
        """Valid frames of an item within the encoder window."""
        return min(int(inputs.shape[-1]), self.window_frames)

    def num_tokens(self, inputs: torch.Tensor) -> int:
        """``ceil(min(frames, 2 * max_source_positions) / 2)`` (the stride-2 conv)."""
        return (self.frames(inputs) + 1) // 2


def fit_mel_window(inputs: torch.Tensor, sizes: list[int], window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop/pad a batch ``[N, n_mels, T]`` to exactly ``window`` frames; frames past each
    item's valid size (``sizes``, or T for all) become that item's silence value
    ``max(-1.5, peak - 2)``. Returns the features and the valid frames (CPU, int64)."""
    count, _, total = inputs.shape
    if sizes and len(sizes) != count:
        raise DataFormatError(f"{count} mel items but {len(sizes)} sizes")
    valid = torch.tensor(sizes if sizes else [total] * count, dtype=torch.long).clamp(max=window)
    features = inputs[..., :window]
    if features.shape[-1] < window:
        features = F.pad(features, (0, window - features.shape[-1]))
    mask = (torch.arange(window) < valid[:, None]).to(features.device)[:, None, :]
    peak = features.masked_fill(~mask, float("-inf")).amax(dim=(1, 2))
    silence = (peak - 2.0).clamp(min=-1.5)  # the log-mel of zero audio after the 8-decade clamp
    return torch.where(mask, features, silence[:, None, None]), valid


class WhisperStyleEncoder(Encoder):
    """Shared set-up of encoders made of Whisper blocks on a log-mel window."""

    def build_tower(self, config: Any, make: Any, prefer: tuple[str, ...]) -> Any:
        """``make(hf_config)`` with random init, or loaded from ``config.pretrained`` (the
        first of the ``prefer`` key prefixes found); sets width, window and feature layer."""
        hf = config.hf_config()
        check_feature_layer(config.feature_layer, hf.encoder_layers, config.name)
        if config.pretrained is not None:
            directory = local_model_dir(config.pretrained, config.name)
            tower = load_tower_weights(lambda: make(hf), directory, config.name, prefer=prefer)
        else:
            tower = make(hf)
        self.out_dim = hf.d_model
        self.window_frames = 2 * hf.max_source_positions
        self.layer_index = hidden_state_index(config.feature_layer, hf.encoder_layers)
        return tower


class WhisperSpeechEncoder(WhisperStyleEncoder):
    """transformers WhisperEncoder: ``forward(mel [N, n_mels, T], sizes) -> ([N, T', D], lengths)``."""

    def __init__(self, config: HfWhisperConfig) -> None:
        super().__init__(config)
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        self.encoder = self.build_tower(config, WhisperEncoder, prefer=("model.encoder.", "encoder.", ""))

    def forward(self, inputs: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of each item's ``ceil(frames / 2)`` valid output frames, and that count."""
        weight = self.encoder.conv1.weight
        features, valid = fit_mel_window(inputs.to(weight.device, weight.dtype), sizes, self.window_frames)
        outputs = self.encoder(features, output_hidden_states=self.layer_index is not None)
        hidden = select_feature_layer(outputs, self.layer_index)
        lengths = (valid + 1) // 2
        return hidden[:, : int(lengths.max())], lengths.to(hidden.device)


ENCODERS.add("hf_whisper", WhisperSpeechEncoder, config=HfWhisperConfig)
