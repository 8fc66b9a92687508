"""``hf_wav2vec2`` and ``hf_hubert``: self-supervised speech encoders on the raw waveform
(transformers Wav2Vec2Model / HubertModel).

``preprocess`` gives the clip as a mono waveform at ``sampling_rate`` (16 kHz), normalised
to zero mean and unit variance as Wav2Vec2FeatureExtractor does with ``do_normalize``.
Items of a batch differ in length only; the pipeline zero-pads them and ``sizes`` holds
the valid samples. The conv feature encoder turns ``L`` samples into
``(L - kernel) // stride + 1`` frames per layer (320 samples = 20 ms per frame for the
released models), which is both ``num_tokens`` and ``_get_feat_extract_output_lengths``.

Padding is kept out of the valid frames: models with ``feat_extract_norm: layer`` get the
attention mask built from ``sizes`` (as transformers recommends for them); models with
``group`` norm (wav2vec2-base, HuBERT-base) normalise their first conv layer over time, so
zero padding would shift every frame; those run each padded item at its own length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch.nn.utils.rnn import pad_sequence

from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.encoders.base import Encoder
from mmpretrain.encoders.speech_common import (
    SpeechEncoderConfig,
    SpeechProcessor,
    check_feature_layer,
    hidden_state_index,
    load_hf_config,
    pretrained_source,
    segment_waveform,
    select_feature_layer,
)
from mmpretrain.errors import DataFormatError, UserError
from mmpretrain.registry import ENCODERS

if TYPE_CHECKING:
    from transformers import PretrainedConfig

# registry name -> (transformers config class, model class, model_type)
_HF_CLASSES: dict[str, tuple[str, str, str]] = {
    "hf_wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model", "wav2vec2"),
    "hf_hubert": ("HubertConfig", "HubertModel", "hubert"),
}


class SslSpeechConfig(SpeechEncoderConfig):
    """Shared fields of the raw-waveform encoders (conv feature encoder + Transformer)."""

    conv_dim: tuple[int, ...] = (512,) * 7
    """Channels of each conv layer of the feature encoder (random init)."""
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    """Kernel of each conv layer (random init)."""
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    """Stride of each conv layer (random init); the product is the samples per frame."""
    feat_extract_norm: Literal["group", "layer"] = "group"
    """Conv feature encoder norm (random init): ``group`` (base models) or ``layer`` (large
    "stable layer norm" models, which also take a padding mask)."""
    num_conv_pos_embeddings: int = Field(128, gt=0)
    """Kernel of the convolutional position embedding (random init)."""
    num_conv_pos_embedding_groups: int = Field(16, gt=0)
    """Groups of the convolutional position embedding (random init)."""
    normalize: bool = True
    """Zero-mean unit-variance waveform per clip (match the checkpoint's
    preprocessor_config.json ``do_normalize``)."""
    spec_augment: bool = False
    """Keep the model's SpecAugment time/feature masking in training mode (off: the
    masking and its ``masked_spec_embed`` parameter are removed)."""
    layerdrop: float = Field(0.0, ge=0.0, lt=1.0)
    """Probability of skipping a block in training (overrides the checkpoint's value)."""

    @model_validator(mode="after")
    def _check_conv(self) -> SslSpeechConfig:
        layers = {len(self.conv_dim), len(self.conv_kernel), len(self.conv_stride)}
        if len(layers) != 1 or not self.conv_dim:
            raise ValueError(
                "conv_dim, conv_kernel and conv_stride must list the same, non-zero number of layers"
            )
        if min(self.conv_dim + self.conv_kernel + self.conv_stride) < 1:
            raise ValueError("conv_dim, conv_kernel and conv_stride entries must be >= 1")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_conv_pos_embedding_groups "
                f"{self.num_conv_pos_embedding_groups}"
            )
        return self

    def _overrides(self) -> dict[str, Any]:
        overrides: dict[str, Any] = {"layerdrop": self.layerdrop}
        if not self.spec_augment:
            overrides.update(apply_spec_augment=False, mask_time_prob=0.0, mask_feature_prob=0.0)
        return overrides

    def hf_config(self) -> PretrainedConfig:
        """The transformers config: from ``pretrained`` or from the fields above, with
        ``layerdrop`` and ``spec_augment`` applied."""
        config_class, _, model_type = _HF_CLASSES[self.name]
        if self.pretrained is not None:
            hf = load_hf_config(self.pretrained, self.name, [model_type])
            for key, value in self._overrides().items():
                setattr(hf, key, value)
            return hf
        import transformers

        return getattr(transformers, config_class)(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            conv_dim=list(self.conv_dim),
            conv_kernel=list(self.conv_kernel),
            conv_stride=list(self.conv_stride),
            feat_extract_norm=self.feat_extract_norm,
            do_stable_layer_norm=self.feat_extract_norm == "layer",
            num_conv_pos_embeddings=self.num_conv_pos_embeddings,
            num_conv_pos_embedding_groups=self.num_conv_pos_embedding_groups,
            **self._overrides(),
        )

    def processor(self) -> WaveformProcessor:
        """Normalised waveform; tokens from the conv kernels and strides."""
        hf = self.hf_config()
        layers = [(int(k), int(s)) for k, s in zip(hf.conv_kernel, hf.conv_stride, strict=True)]
        if getattr(hf, "add_adapter", False):  # transformers counts adapter convs as kernel 1
            layers += [(1, int(hf.adapter_stride))] * int(hf.num_adapter_layers)
        return WaveformProcessor(layers, self.sampling_rate, self.normalize)


class HfWav2Vec2Config(SslSpeechConfig):
    """wav2vec 2.0 encoder (transformers Wav2Vec2Model) on the raw 16 kHz waveform."""

    name: Literal["hf_wav2vec2"]


class HfHubertConfig(SslSpeechConfig):
    """HuBERT encoder (transformers HubertModel) on the raw 16 kHz waveform."""

    name: Literal["hf_hubert"]


def conv_output_length(samples: int, layers: list[tuple[int, int]]) -> int:
    """Frames of the conv stack: ``(L - kernel) // stride + 1`` per ``(kernel, stride)``."""
    for kernel, stride in layers:
        samples = (samples - kernel) // stride + 1
    return samples


class WaveformProcessor(SpeechProcessor):
    """``preprocess``: mono waveform ``[samples]`` at ``sampling_rate``, normalised;
    ``num_tokens``: the conv stack's output frames for the sample count."""

    def __init__(
        self, layers: list[tuple[int, int]], sampling_rate: int = 16000, normalize: bool = True
    ) -> None:
        self.layers = layers
        self.sampling_rate = sampling_rate
        self.normalize = normalize
        # Shorter clips are zero-padded to the conv stack's receptive field (one frame).
        receptive = 1
        for kernel, stride in reversed(layers):
            receptive = (receptive - 1) * stride + kernel
        self.min_samples = receptive

    def preprocess(self, segment: DecodedSegment) -> torch.Tensor:
        """``[samples]`` float32: mono, resampled, ``(x - mean) / sqrt(var + 1e-7)``."""
        wave = segment_waveform(segment, self.sampling_rate)
        if self.normalize:  # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm, in float32
            wave = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
        if len(wave) < self.min_samples:
            wave = np.pad(wave, (0, self.min_samples - len(wave)))
        return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))

    def num_tokens(self, inputs: torch.Tensor) -> int:
        """Conv stack output frames for ``inputs.shape[-1]`` samples."""
        return max(0, conv_output_length(int(inputs.shape[-1]), self.layers))


class SslSpeechEncoder(Encoder):
    """transformers Wav2Vec2Model / HubertModel: ``forward(wave [N, S], sizes) -> ([N, T, D], lengths)``."""

    def __init__(self, config: SslSpeechConfig) -> None:
        super().__init__(config)
        import transformers

        _, model_class_name, _ = _HF_CLASSES[config.name]
        model_class = getattr(transformers, model_class_name)
        hf = config.hf_config()
        check_feature_layer(config.feature_layer, hf.num_hidden_layers, config.name)
        if config.pretrained is not None:
            source = pretrained_source(config.pretrained, config.name)
            try:
                self.model = model_class.from_pretrained(source, config=hf, dtype=torch.float32)
            except OSError as exc:
                raise UserError(
                    f"cannot load {config.name} from {config.pretrained!r}: {exc}. Use a local directory "
                    "with config.json and weights (the hub is unreachable or HF_HUB_OFFLINE=1 is set)"
                ) from exc
        else:
            self.model = model_class(hf)
        self.out_dim = hf.hidden_size
        self.masks_padding = hf.feat_extract_norm == "layer"
        self.layer_index = hidden_state_index(config.feature_layer, hf.num_hidden_layers)

    def _run(self, waves: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        outputs = self.model(
            waves, attention_mask=attention_mask, output_hidden_states=self.layer_index is not None
        )
        return select_feature_layer(outputs, self.layer_index)

    def forward(self, inputs: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame features of each item's valid samples, and the frame count per item."""
        count, total = inputs.shape
        if sizes and len(sizes) != count:
            raise DataFormatError(f"{count} waveforms but {len(sizes)} sizes")
        valid = torch.tensor(sizes if sizes else [total] * count, dtype=torch.long)
        param = next(self.model.parameters())
        waves = inputs.to(param.device, param.dtype)
        if int(valid.min()) == total:
            hidden = self._run(waves)
        elif self.masks_padding:
            mask = (torch.arange(total) < valid[:, None]).long().to(param.device)
            hidden = self._run(waves, mask)
        else:  # group norm statistics span time: run each item unpadded
            hidden = pad_sequence(
                [self._run(waves[i : i + 1, : int(v)])[0] for i, v in enumerate(valid)], batch_first=True
            )
        lengths = self.model._get_feat_extract_output_lengths(valid).long()
        return hidden[:, : int(lengths.max())], lengths.to(hidden.device)


ENCODERS.add("hf_wav2vec2", SslSpeechEncoder, config=HfWav2Vec2Config)
ENCODERS.add("hf_hubert", SslSpeechEncoder, config=HfHubertConfig)
