"""``speech_units``: discrete speech units from k-means over a speech encoder's features.

audio -> the encoder's own preprocessing -> hidden states of ``encoder.feature_layer`` (one
vector per frame: 20 ms for HuBERT, 20 ms for Whisper's encoder) -> nearest of ``k``
centroids per frame -> run-length de-duplication (``dedup``: ``5 5 5 9 9 5`` becomes
``5 9 5``) -> unit ids in ``[0, k)``. This is the HuBERT / GSLM recipe (k-means over a
middle layer of a pretrained HuBERT, e.g. layer 6 of hubert-base with k = 100 or 500);
a random-init encoder gives units that carry no phonetic meaning but exercise the same
path.

The encoder is ``hf_hubert`` or ``hf_whisper`` (their configs and modules, unchanged):
random init from the size fields (seeded with ``seed``) or local weights from
``pretrained``. Whisper's encoder reads a fixed window (``2 * max_source_positions`` mel
frames), so longer clips are encoded window by window.

A saved tokenizer directory holds the encoder's weights (``encoder.*``) and the centroids
(``centroids``) in ``model.safetensors`` and, in ``media_tokenizer.json``, this config plus
the encoder's full transformers config, so loading needs neither ``pretrained`` nor the
hub and gives the same units.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, PrivateAttr

from mmpretrain.config import ComponentConfig, ConfigModel, validate_config
from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.encoders.base import Encoder
from mmpretrain.encoders.hf_ssl_speech import HfHubertConfig
from mmpretrain.encoders.hf_whisper import HOP_LENGTH, HfWhisperConfig
from mmpretrain.encoders.kmeans import nearest_centroid
from mmpretrain.encoders.media_tokenizer import (
    WEIGHTS,
    MediaTokenizer,
    load_media_tokenizer,
    register_media_tokenizer_loader,
    write_manifest,
)
from mmpretrain.encoders.speech_common import segment_waveform
from mmpretrain.errors import ConfigError, UserError
from mmpretrain.registry import ENCODERS, TOKENIZERS

KIND = "speech_units"
ENCODER_PREFIX = "encoder."
CENTROIDS = "centroids"
HF_CONFIG_KEY = "encoder_hf_config"
"""Key of the encoder's transformers config inside the manifest's ``config``."""

SpeechUnitEncoderConfig = Annotated[HfHubertConfig | HfWhisperConfig, Field(discriminator="name")]


class SpeechUnitsFitConfig(ConfigModel):
    """How `mmpt tokenizer train --kind speech_units` fits the centroids."""

    max_clips: int | None = Field(None, ge=1)
    """Audio segments read from the input shards (in shard order); None = all of them."""
    max_frames: int = Field(100_000, ge=1)
    """Frames k-means runs on: a seeded random sample when the clips give more (memory:
    every read frame is kept, ``frames x feature width x 4`` bytes)."""
    max_iter: int = Field(100, ge=1)
    """Lloyd iterations at most."""
    tol: float = Field(1e-4, ge=0.0)
    """Stop when the summed squared centroid shift is at most ``tol`` x the mean
    per-dimension variance of the frames (sklearn's relative tolerance)."""


class SpeechUnitsConfig(ConfigModel):
    """Speech-unit tokenizer: k-means units over one layer of a speech encoder."""

    encoder: SpeechUnitEncoderConfig
    """``hf_hubert`` or ``hf_whisper`` encoder config; its ``feature_layer`` is the layer
    whose features are clustered (-1 = final output; HuBERT units usually take a middle
    layer, e.g. 6 of hubert-base's 12)."""
    k: int = Field(100, ge=2)
    """Number of units (centroids) = the codebook size. Speech-unit LMs use 50 to 2000
    (GSLM: 50, 100, 200); any k >= 2 is accepted."""
    seed: int = 0
    """Seeds the random-init encoder, the frame sample and the k-means++ draws."""
    dedup: bool = True
    """Run-length de-duplication: consecutive equal units collapse into one."""
    fit: SpeechUnitsFitConfig = SpeechUnitsFitConfig()
    """Fitting options (only training reads them)."""


class SpeechUnitsTokenizerConfig(ComponentConfig):
    """Speech units: k-means over a HuBERT/Whisper layer (`mmpt tokenizer train --kind speech_units`)."""

    name: Literal["speech_units"]
    path: str | None = None
    """Trained speech-unit tokenizer directory (``media_tokenizer.json`` + ``model.safetensors``)."""


def dedup_runs(units: Sequence[int]) -> list[int]:
    """Run-length de-duplication: each run of equal consecutive units becomes one unit."""
    return [unit for i, unit in enumerate(units) if i == 0 or unit != units[i - 1]]


# ------------------------------------------------------------------ encoder with a saved architecture


class _SavedHubertConfig(HfHubertConfig):
    """``hf_hubert`` whose transformers config is the one saved with the tokenizer."""

    _saved: dict[str, Any] = PrivateAttr(default_factory=dict)

    def hf_config(self) -> Any:
        import transformers

        return transformers.HubertConfig.from_dict(self._saved)


class _SavedWhisperConfig(HfWhisperConfig):
    """``hf_whisper`` whose transformers config is the one saved with the tokenizer."""

    _saved: dict[str, Any] = PrivateAttr(default_factory=dict)

    def hf_config(self) -> Any:
        import transformers

        return transformers.WhisperConfig.from_dict(self._saved)


_SAVED_CLASSES: dict[str, type[_SavedHubertConfig] | type[_SavedWhisperConfig]] = {
    "hf_hubert": _SavedHubertConfig,
    "hf_whisper": _SavedWhisperConfig,
}


def _encoder_with_architecture(config: HfHubertConfig | HfWhisperConfig, hf: dict[str, Any]) -> Encoder:
    """The encoder module of ``config`` built (random init) from the saved transformers config
    ``hf``, ready for the saved weights; ``pretrained`` is not read."""
    saved = _SAVED_CLASSES[config.name](**{**config.model_dump(), "pretrained": None})
    saved._saved = hf
    with torch.random.fork_rng(devices=[]):  # the init is overwritten: leave the caller's RNG alone
        encoder: Encoder = ENCODERS.build(saved)
    return encoder


def build_unit_encoder(config: HfHubertConfig | HfWhisperConfig, seed: int) -> Encoder:
    """The encoder of a new tokenizer: random init seeded with ``seed`` (the global RNG is
    left as it was) or the local weights of ``config.pretrained``; in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder: Encoder = ENCODERS.build(config)
    return encoder.eval()


# ------------------------------------------------------------------ tokenizer


class SpeechUnitTokenizer:
    """audio segment -> frame features -> nearest centroid -> (dedup) -> unit ids."""

    kind = KIND
    modality = "audio"

    def __init__(
        self, config: SpeechUnitsConfig, encoder: Encoder, centroids: torch.Tensor, hf_config: dict[str, Any]
    ) -> None:
        if tuple(centroids.shape) != (config.k, encoder.out_dim):
            raise ValueError(
                f"centroids must be [k={config.k}, {encoder.out_dim}], got {tuple(centroids.shape)}"
            )
        self.config = config
        self.encoder = encoder.eval()
        self.centroids = centroids.float().contiguous()
        self.hf_config = hf_config
        self.codebook_size = config.k
        # Whisper reads a fixed window of mel frames: longer clips are encoded piece by piece.
        self.window: int | None = getattr(encoder, "window_frames", None)

    @classmethod
    def create(cls, config: SpeechUnitsConfig) -> SpeechUnitTokenizer:
        """A tokenizer with the configured encoder and zero centroids (fit them next)."""
        encoder = build_unit_encoder(config.encoder, config.seed)
        hf = config.encoder.hf_config().to_dict()
        return cls(config, encoder, torch.zeros(config.k, encoder.out_dim), hf)

    @torch.no_grad()
    def frame_features(self, segment: DecodedSegment) -> torch.Tensor:
        """``[frames, D]`` float32 hidden states of ``encoder.feature_layer`` for the clip."""
        features = []
        for piece in self._pieces(segment):
            inputs = self.encoder.preprocess(piece)
            hidden, lengths = self.encoder(inputs[None], [])
            features.append(hidden[0, : int(lengths[0])].float().cpu())
        return torch.cat(features)

    def _pieces(self, segment: DecodedSegment) -> list[DecodedSegment]:
        """The clip, or for a windowed encoder (Whisper) consecutive pieces of at most one
        window of audio each (each gets its own log-mel, as Whisper's 30 s chunks do)."""
        if self.window is None:
            return [segment]
        rate = self.config.encoder.sampling_rate
        wave = segment_waveform(segment, rate)
        step = self.window * HOP_LENGTH
        return [
            DecodedSegment(kind="audio", audio=wave[start : start + step], sample_rate=rate)
            for start in range(0, len(wave), step)
        ]

    def units_of_features(self, features: torch.Tensor) -> list[int]:
        """Nearest-centroid unit of each frame (no de-duplication)."""
        return [int(u) for u in nearest_centroid(features, self.centroids)[0]]

    def frame_units(self, segment: DecodedSegment) -> list[int]:
        """One unit per encoder frame (no de-duplication)."""
        return self.units_of_features(self.frame_features(segment))

    def encode(self, segment: DecodedSegment) -> list[int]:
        """Unit ids of the clip in ``[0, k)``, run-length de-duplicated when ``dedup``."""
        units = self.frame_units(segment)
        return dedup_runs(units) if self.config.dedup else units

    def save(self, directory: Path) -> None:
        """Write ``media_tokenizer.json`` (config + encoder architecture) and
        ``model.safetensors`` (``encoder.*`` weights and ``centroids``)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        config = {**self.config.model_dump(mode="json"), HF_CONFIG_KEY: self.hf_config}
        write_manifest(directory, KIND, self.modality, self.codebook_size, config)
        tensors = {
            ENCODER_PREFIX + k: v.detach().cpu().contiguous() for k, v in self.encoder.state_dict().items()
        }
        tensors[CENTROIDS] = self.centroids
        save_file(tensors, str(directory / WEIGHTS), metadata={"kind": KIND})


@register_media_tokenizer_loader(KIND)
def load_speech_units(directory: Path, manifest: dict[str, Any]) -> MediaTokenizer:
    """Rebuild a saved speech-unit tokenizer (architecture from the manifest, weights and
    centroids from ``model.safetensors``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    raw = dict(manifest.get("config") or {})
    hf = raw.pop(HF_CONFIG_KEY, None)
    if not isinstance(hf, dict):
        raise UserError(
            f"{directory}: media_tokenizer.json lacks config.{HF_CONFIG_KEY}; re-train the tokenizer"
        )
    config = validate_config(SpeechUnitsConfig, raw, f"{directory}/media_tokenizer.json config")
    weights = directory / WEIGHTS
    try:
        tensors = load_file(str(weights))
    except (OSError, SafetensorError) as exc:
        raise UserError(f"cannot read {weights}: {exc}") from None
    centroids = tensors.pop(CENTROIDS, None)
    if centroids is None:
        raise UserError(f"{weights} has no '{CENTROIDS}' tensor; re-train the tokenizer")
    encoder = _encoder_with_architecture(config.encoder, hf)
    state = {k.removeprefix(ENCODER_PREFIX): v for k, v in tensors.items() if k.startswith(ENCODER_PREFIX)}
    try:
        encoder.load_state_dict(state, strict=True)
        return SpeechUnitTokenizer(config, encoder, centroids, hf)
    except (RuntimeError, ValueError) as exc:
        summary = " ".join(str(exc).split())[:300]
        raise UserError(f"{weights} does not match {directory}/media_tokenizer.json: {summary}") from None


@TOKENIZERS.register(KIND, config=SpeechUnitsTokenizerConfig)
def build_speech_units_tokenizer(cfg: SpeechUnitsTokenizerConfig) -> MediaTokenizer:
    """Load the speech-unit tokenizer directory ``cfg.path``."""
    if cfg.path is None:
        raise ConfigError(
            "speech_units tokenizer: path is not set; train one with `mmpt tokenizer train "
            "--kind speech_units --input SHARDS --out DIR` and set path to DIR"
        )
    tokenizer = load_media_tokenizer(cfg.path)
    if tokenizer.kind != KIND:
        raise ConfigError(f"speech_units tokenizer: {cfg.path} holds a {tokenizer.kind!r} tokenizer")
    return tokenizer
