"""What the speech encoders share: the waveform at the encoder's rate, loading an audio
tower's weights, and picking the hidden state to return.

- :func:`segment_waveform` turns a decoded audio segment into a mono float32 waveform at
  the encoder's sampling rate (resampled with torchaudio when it imports, else with
  ``scipy.signal.resample_poly`` at the exact rate ratio).
- :func:`load_hf_config` and :func:`load_tower_weights` read a local model directory (a
  hub id only where the hub is reachable); the weights of just the audio tower are read
  from a full model's checkpoint (``model.encoder.*``, ``audio_tower.*``, ...).
- :func:`select_feature_layer` maps ``feature_layer`` to one of transformers' outputs.

transformers, safetensors and the resamplers are imported inside the functions so that
importing the encoders stays cheap.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from mmpretrain.data.decoders import MAX_CHANNELS, DecodedSegment
from mmpretrain.encoders.base import EncoderConfig, EncoderProcessor
from mmpretrain.errors import ConfigError, DataFormatError, UserError

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class SpeechEncoderConfig(EncoderConfig):
    """Fields every speech encoder has (random-init sizes are ignored with ``pretrained``)."""

    pretrained: str | None = None
    """Local model directory (a hub id where reachable) holding the encoder alone or a
    whole model that contains it (only the audio tower's weights are read); the size
    fields below are then taken from its config.json. None = random init."""
    hidden_size: int = Field(384, gt=0)
    """Encoder width (random init)."""
    num_layers: int = Field(4, gt=0)
    """Transformer blocks (random init)."""
    num_heads: int = Field(6, gt=0)
    """Attention heads (random init)."""
    intermediate_size: int = Field(1536, gt=0)
    """MLP inner width (random init)."""
    feature_layer: int = -1
    """Hidden state returned: -1 = the encoder's final output; 0 = the embeddings fed to
    the first block; k = the output of block k; -2 = the output of the second-to-last
    block, and so on down to -(num_layers + 1)."""
    sampling_rate: int = Field(16000, gt=0)
    """Rate (Hz) the encoder was trained at; audio is resampled to it."""

    @model_validator(mode="after")
    def _check_heads(self) -> SpeechEncoderConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self

    def modality(self) -> Literal["audio"]:
        """Speech encoders read audio."""
        return "audio"


class SpeechProcessor(EncoderProcessor):
    """Base of the speech processors (audio modality)."""

    modality: ClassVar[str] = "audio"


# ---------------------------------------------------------------------------- waveform


def to_mono(audio: np.ndarray) -> np.ndarray:
    """A 1-D float32 waveform: 2-D input is mixed down by averaging its channels (the
    shorter axis, at most MAX_CHANNELS long, is taken as the channel axis)."""
    wave = np.asarray(audio, dtype=np.float32)
    if wave.ndim == 2:
        channel_axis = int(np.argmin(wave.shape))
        if wave.shape[channel_axis] > MAX_CHANNELS:
            raise DataFormatError(f"audio of shape {wave.shape} has more than {MAX_CHANNELS} channels")
        wave = wave.mean(axis=channel_axis, dtype=np.float32)
    elif wave.ndim != 1:
        raise DataFormatError(f"audio must be a 1-D waveform or (frames, channels), got shape {wave.shape}")
    return np.ascontiguousarray(wave)


@functools.lru_cache(maxsize=1)
def _torchaudio_resample() -> Callable[..., torch.Tensor] | None:
    try:
        from torchaudio.functional import resample
    except Exception:  # not installed, or built for another torch (ImportError, OSError, ...)
        return None
    return resample


def resample_backend() -> str:
    """``torchaudio`` when it imports, else ``scipy``."""
    return "torchaudio" if _torchaudio_resample() is not None else "scipy"


def resample(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample a mono waveform from ``orig_rate`` to ``target_rate`` Hz.

    Both backends give ``ceil(len * target / orig)`` samples (band-limited sinc
    interpolation; torchaudio's and scipy's filters differ slightly, so pick one
    environment per run when bit-identical features matter).
    """
    if orig_rate == target_rate:
        return audio
    if orig_rate <= 0 or target_rate <= 0:
        raise DataFormatError(f"cannot resample from {orig_rate} Hz to {target_rate} Hz")
    torchaudio_resample = _torchaudio_resample()
    if torchaudio_resample is not None:
        out = torchaudio_resample(torch.from_numpy(audio), orig_rate, target_rate)
        return out.numpy().astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    common = math.gcd(orig_rate, target_rate)
    out = resample_poly(audio, target_rate // common, orig_rate // common)
    return np.asarray(out, dtype=np.float32)


def segment_waveform(segment: DecodedSegment, target_rate: int, min_samples: int = 1) -> np.ndarray:
    """The segment's audio as a mono float32 waveform at ``target_rate``, zero-padded
    (silence) to at least ``min_samples`` so every clip yields at least one token."""
    if segment.audio is None or not segment.sample_rate:
        raise DataFormatError(
            f"segment {segment.member or segment.kind!r} has no decoded audio or sample rate; "
            "speech encoders read audio segments"
        )
    wave = to_mono(segment.audio)
    if wave.size == 0:
        raise DataFormatError(f"audio segment {segment.member or ''!r} has no samples")
    wave = resample(wave, int(segment.sample_rate), target_rate)
    if len(wave) < min_samples:
        wave = np.pad(wave, (0, min_samples - len(wave)))
    return wave


# ---------------------------------------------------------------------------- pretrained


def _offline_error(name: str, pretrained: str, exc: Exception) -> UserError:
    return UserError(
        f"cannot load {name} from {pretrained!r}: {exc}. The hub is unreachable or "
        "HF_HUB_OFFLINE=1 is set: download the model once and set pretrained to its local "
        "directory (config.json and weights)"
    )


def pretrained_source(pretrained: str, name: str) -> str:
    """A local directory (as a path string) or a hub id; a path that is not a directory
    is a ConfigError."""
    path = Path(pretrained).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists() or pretrained.startswith((".", "/", "~")):
        raise ConfigError(f"{name}: pretrained {pretrained!r} is not a model directory")
    return pretrained


def load_hf_config(pretrained: str, name: str, accept: Iterable[str]) -> PretrainedConfig:
    """The transformers config of ``pretrained`` whose model_type is in ``accept``; a
    composite model's sub-config of an accepted type (e.g. ``audio_config``) is returned."""
    import transformers

    source = pretrained_source(pretrained, name)
    try:
        config = transformers.AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise _offline_error(name, pretrained, exc) from exc
    accepted = tuple(accept)
    if config.model_type in accepted:
        return config
    for attr in ("audio_config", "encoder_config"):
        sub = getattr(config, attr, None)
        if sub is not None and getattr(sub, "model_type", None) in accepted:
            return sub
    raise ConfigError(
        f"{name}: pretrained {pretrained!r} holds a {config.model_type!r} model; {name} reads "
        f"{' or '.join(accepted)} models (pick the encoder name matching the checkpoint)"
    )


def local_model_dir(pretrained: str, name: str) -> Path:
    """``pretrained`` as a local directory; a hub id is fetched (config and safetensors
    files) where the hub is reachable, else a UserError says to use a local directory."""
    source = pretrained_source(pretrained, name)
    if Path(source).is_dir():
        return Path(source)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors"]))
    except (OSError, ValueError) as exc:
        raise _offline_error(name, pretrained, exc) from exc


def _checkpoint_files(directory: Path) -> dict[str, list[str]]:
    """Weight file -> the tensor names it holds (safetensors preferred, then .bin)."""
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = directory / index_name
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files: dict[str, list[str]] = {}
            for key, file in weight_map.items():
                files.setdefault(file, []).append(key)
            return files
        if (directory / single).is_file():
            return {single: _tensor_names(directory / single)}
    raise ConfigError(f"{directory} has no model.safetensors or pytorch_model.bin (nor their index)")


def _tensor_names(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    return list(_read_bin(path))


def _read_bin(path: Path) -> dict[str, torch.Tensor]:
    file = str(path)
    return torch.load(file, map_location="cpu", mmap=True, weights_only=True)


def _read_tensors(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in names}
    state = _read_bin(path)
    return {name: state[name] for name in names}


def load_tower_weights(
    make_module: Callable[[], nn.Module], directory: Path, name: str, prefer: Iterable[str] = ()
) -> nn.Module:
    """Build ``make_module()`` and fill it with the matching tensors of the checkpoint in
    ``directory``: the module saved alone, or a whole model holding it under a prefix
    (found from the first parameter's name; ``prefer`` breaks ties). Only the tower's
    tensors are read; the module is built on the meta device and ends in float32."""
    with torch.device("meta"):
        module = make_module()
    expected = list(module.state_dict())
    files = _checkpoint_files(directory)
    anchor = expected[0]
    prefixes = sorted(
        {
            key[: len(key) - len(anchor)]
            for keys in files.values()
            for key in keys
            if key.endswith(anchor) and (key == anchor or key[: -len(anchor)].endswith("."))
        }
    )
    preferred = [p for p in prefer if p in prefixes]
    if not prefixes or (len(prefixes) > 1 and not preferred):
        found = ", ".join(repr(p) for p in prefixes) or "none"
        raise ConfigError(
            f"{name}: cannot find the audio tower in {directory} (tensor {anchor!r} under prefixes: "
            f"{found}); point pretrained at the encoder's or the whole model's directory"
        )
    prefix = preferred[0] if preferred else prefixes[0]
    wanted = {prefix + key: key for key in expected}
    state: dict[str, torch.Tensor] = {}
    for file, keys in files.items():
        names = [key for key in keys if key in wanted]
        if names:
            for key, tensor in _read_tensors(directory / file, names).items():
                state[wanted[key]] = tensor
    missing = [key for key in expected if key not in state]
    if missing:
        raise ConfigError(
            f"{name}: {directory} lacks {len(missing)} tensors of the audio tower under prefix "
            f"{prefix!r} (e.g. {missing[:3]}); the checkpoint does not match its config.json"
        )
    module.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
    if left:  # a buffer the checkpoint does not hold (none in the towers supported here)
        raise ConfigError(f"{name}: {directory} does not hold {left[:3]}")
    return module.float()


# ---------------------------------------------------------------------------- outputs


def check_feature_layer(feature_layer: int, num_layers: int, name: str) -> None:
    """``feature_layer`` must name one of the ``num_layers + 1`` hidden states."""
    if not -(num_layers + 1) <= feature_layer <= num_layers:
        raise ConfigError(
            f"{name}: feature_layer {feature_layer} is out of range for {num_layers} blocks "
            f"(use -{num_layers + 1}..{num_layers}; -1 = final output)"
        )


def hidden_state_index(feature_layer: int, num_layers: int) -> int | None:
    """Index into transformers' ``hidden_states`` (embeddings + one per block) of
    ``feature_layer``; None for the final output (``last_hidden_state``)."""
    index = feature_layer if feature_layer >= 0 else num_layers + 1 + feature_layer
    return None if index == num_layers else index


def select_feature_layer(outputs: Any, index: int | None) -> torch.Tensor:
    """``outputs.last_hidden_state`` (index None) or ``outputs.hidden_states[index]``."""
    if index is None:
        return outputs.last_hidden_state
    return outputs.hidden_states[index]
