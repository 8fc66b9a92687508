"""Our own allow-listed decoders for shard members: extension -> function on raw bytes.

Shards can come from anywhere, so only the extensions of the data format are ever decoded
(docs/data-format.md), each by a decoder written here: images with Pillow (JPEG, PNG and
WebP plug-ins only), audio with soundfile (FLAC and WAV only), ``KEY.json`` with the strict
schema parser. webdataset's default decoders are never used: they unpickle ``.pyd`` and
``.pickle`` members and ``torch.load`` ``.pt`` ones, which runs the shard's code.

Every problem raises :class:`DecodeError` (a :class:`DataFormatError`) with a stable
``reason`` slug (``bad_image``, ``image_too_large``, ``bad_audio``, ``audio_too_long``,
``empty_text``) that the reader counts. Size limits are checked from the file header
before any pixels or samples are decoded, so a decompression bomb costs no memory.
"""

from __future__ import annotations

import io
import math
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from mmpretrain.errors import DataFormatError

from .shard_schema import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, parse_sample_json
from .types import Sample, SegmentKind

DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
DEFAULT_MAX_AUDIO_SECONDS = 60.0

MAX_SAMPLE_RATE = 384_000
"""Highest audio sample rate accepted; a larger one is a broken or hostile header."""

MAX_CHANNELS = 64
"""Most audio channels accepted (they are mixed down to mono block by block)."""

# Any image extension may hold any of these formats (real data mislabels JPEG as .png),
# but no other Pillow plug-in is ever tried: some (EPS) run external programs.
_PIL_FORMATS = ("JPEG", "PNG", "WEBP")
_SOUNDFILE_FORMATS = ("FLAC", "WAV", "WAVEX", "RF64")
_AUDIO_BLOCK_FRAMES = 65536

# Image.MAX_IMAGE_PIXELS and the warnings filters are process-wide; threads take turns
# changing them, only while a header is parsed (DataLoader workers are processes anyway).
_PIL_LOCK = threading.Lock()


class DecodeError(DataFormatError):
    """A member could not be decoded; ``reason`` is the slug the reader counts it under."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DecodeLimits:
    """Limits applied while decoding media (``data.max_image_pixels``, ``data.max_audio_seconds``)."""

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS

    def __post_init__(self) -> None:
        if self.max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be >= 1, got {self.max_image_pixels}")
        if not self.max_audio_seconds > 0:
            raise ValueError(f"max_audio_seconds must be > 0, got {self.max_audio_seconds}")


@dataclass
class DecodedSegment:
    """One segment with its media decoded.

    Text segments keep ``text``. Image segments carry ``image`` (an RGB ``PIL.Image``);
    audio segments carry ``audio`` (mono float32 waveform), ``sample_rate`` and the
    optional transcript in ``text``. ``meta`` and ``member`` are the shard's.
    """

    kind: SegmentKind
    text: str | None = None
    image: Image.Image | None = None
    audio: np.ndarray | None = None
    sample_rate: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    member: str | None = None
    loss: bool = True  # text only: False = no loss on it (a prompt, a user turn)


@dataclass
class DecodedSample:
    """A :class:`~mmpretrain.data.types.Sample` with decoded media, plus the shard it came from."""

    key: str
    source: str
    segments: list[DecodedSegment]
    meta: dict[str, Any] = field(default_factory=dict)
    shard: str = ""

    @property
    def num_images(self) -> int:
        return sum(seg.kind == "image" for seg in self.segments)

    @property
    def audio_seconds(self) -> float:
        """Total duration of the sample's audio clips, in seconds."""
        return sum(
            len(seg.audio) / seg.sample_rate
            for seg in self.segments
            if seg.audio is not None and seg.sample_rate
        )


# ------------------------------------------------------------------------------ images


@contextmanager
def _pil_header_only() -> Iterator[None]:
    """Pillow's own pixel limit lifted while a header is parsed: :func:`decode_image` checks
    the size itself, with any limit and a clear message, before a pixel is decoded."""
    with _PIL_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _too_large(max_pixels: int, detail: str) -> DecodeError:
    return DecodeError(
        "image_too_large",
        f"image {detail}, over the limit of {max_pixels} pixels (data.max_image_pixels); "
        "downscale it when building the shards or raise the limit",
    )


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """JPEG/PNG/WebP bytes -> an RGB ``PIL.Image`` (EXIF orientation applied).

    The size is read from the header and checked against ``max_pixels`` before any pixel
    is decoded. Transparent images are composited on white. Corrupt or truncated files
    raise :class:`DecodeError` ``bad_image``; oversize ones ``image_too_large``.
    """
    try:
        with _pil_header_only():
            image = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large(max_pixels, f"is too large ({exc})") from None
    except Exception as exc:  # Pillow raises many types on malformed input
        raise DecodeError("bad_image", f"not a readable JPEG/PNG/WebP image: {_pil_message(exc)}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise _too_large(max_pixels, f"is {width}x{height} = {width * height} pixels")
    if width < 1 or height < 1:
        raise DecodeError("bad_image", f"image has an empty size {width}x{height}")
    try:
        image.load()  # Pillow refuses truncated files unless told otherwise
        return _to_rgb(_exif_transposed(image))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large(max_pixels, f"is too large ({exc})") from None
    except Exception as exc:
        raise DecodeError("bad_image", f"corrupt or truncated image: {_pil_message(exc)}") from None


def _pil_message(exc: Exception) -> str:
    # "cannot identify image file <_io.BytesIO object at 0x...>" says nothing useful.
    text = str(exc).split(" <_io.BytesIO", 1)[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _exif_transposed(image: Image.Image) -> Image.Image:
    try:
        if not image.getexif().get(0x0112, 1) - 1:  # orientation 1 (or none): no copy needed
            return image
        return ImageOps.exif_transpose(image) or image
    except Exception:  # a broken EXIF block does not make the pixels unusable
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "P" or (image.mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode == "RGB":  # already RGB: keep it (convert() would copy every pixel)
        image.load()
        return image
    return image.convert("RGB")


# ------------------------------------------------------------------------------ audio


def decode_audio(data: bytes, max_seconds: float = DEFAULT_MAX_AUDIO_SECONDS) -> tuple[np.ndarray, int]:
    """FLAC/WAV bytes -> ``(mono float32 waveform, sample_rate)``.

    The duration in the header is checked against ``max_seconds`` before any sample is
    decoded, and again while reading (a header may understate it). Channels are averaged
    block by block, so memory stays within one mono clip of ``max_seconds``.
    """
    import soundfile as sf  # imported here: `import mmpretrain.data` stays cheap

    try:
        sound = sf.SoundFile(io.BytesIO(data))
    except Exception as exc:  # libsndfile errors, and struct/value errors on odd headers
        raise DecodeError("bad_audio", f"not a readable FLAC/WAV file: {_sf_message(exc)}") from None
    with sound:
        if sound.format not in _SOUNDFILE_FORMATS:
            raise DecodeError("bad_audio", f"audio is {sound.format}, not FLAC or WAV")
        rate, channels, declared = sound.samplerate, sound.channels, sound.frames
        if not 1 <= rate <= MAX_SAMPLE_RATE or not 1 <= channels <= MAX_CHANNELS:
            raise DecodeError("bad_audio", f"implausible audio header: {rate} Hz, {channels} channels")
        limit = math.floor(max_seconds * rate)
        if declared > limit:
            raise _too_long(declared / rate, max_seconds)
        blocks: list[np.ndarray] = []
        total = 0
        try:
            while True:
                block = sound.read(_AUDIO_BLOCK_FRAMES, dtype="float32", always_2d=True)
                if not len(block):
                    break
                total += len(block)
                if total > limit:
                    raise _too_long(total / rate, max_seconds)
                blocks.append(block.mean(axis=1, dtype=np.float32) if channels > 1 else block[:, 0].copy())
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError("bad_audio", f"corrupt or truncated audio: {_sf_message(exc)}") from None
    if total == 0:
        raise DecodeError("bad_audio", "audio has no samples")
    if declared > 0 and total < declared:
        raise DecodeError("bad_audio", f"truncated audio: the header says {declared} frames, read {total}")
    return np.concatenate(blocks), rate


def _too_long(seconds: float, max_seconds: float) -> DecodeError:
    return DecodeError(
        "audio_too_long",
        f"audio is {seconds:.1f} s long, over the limit of {max_seconds:g} s "
        "(data.max_audio_seconds); cut it when building the shards or raise the limit",
    )


def _sf_message(exc: Exception) -> str:
    text = getattr(exc, "error_string", None) or str(exc)
    return f"{type(exc).__name__}: {text}"


# ------------------------------------------------------------------------------ dispatch


def _decode_image_member(data: bytes, limits: DecodeLimits) -> Image.Image:
    return decode_image(data, limits.max_image_pixels)


def _decode_audio_member(data: bytes, limits: DecodeLimits) -> tuple[np.ndarray, int]:
    return decode_audio(data, limits.max_audio_seconds)


def _decode_json_member(data: bytes, limits: DecodeLimits) -> dict[str, Any]:
    return parse_sample_json("?", data)


DECODERS: Mapping[str, Callable[[bytes, DecodeLimits], Any]] = {
    **dict.fromkeys(IMAGE_EXTENSIONS, _decode_image_member),
    **dict.fromkeys(AUDIO_EXTENSIONS, _decode_audio_member),
    "json": _decode_json_member,
}
"""The only member extensions that are ever decoded, and their decoders."""


def decode_member(name: str, data: bytes, limits: DecodeLimits | None = None) -> Any:
    """Decode one member by its extension (``"0.png"``, ``"KEY.json"``); any other extension
    raises :class:`DecodeError` without looking at the bytes."""
    ext = name.rsplit(".", 1)[-1].lower()
    if ext == "json" and name.endswith(".json"):
        return parse_sample_json(name.removesuffix(".json"), data)  # errors name the key
    decoder = DECODERS.get(ext)
    if decoder is None:
        raise DecodeError(
            "bad_sample",
            f"member {name!r}: extension {ext!r} is never decoded (allowed: {', '.join(DECODERS)})",
        )
    return decoder(data, limits or DecodeLimits())


def decode_sample(sample: Sample, limits: DecodeLimits | None = None) -> DecodedSample:
    """Decode every media segment of ``sample``; text segments pass through unchanged.

    Raises :class:`DecodeError` naming the sample key and member. A text segment that is
    empty or only whitespace is ``empty_text`` (a builder bug: it carries nothing to train
    on); the schema already rejects ``""`` when the shard is read.
    """
    limits = limits or DecodeLimits()
    segments: list[DecodedSegment] = []
    for i, seg in enumerate(sample.segments):
        where = f"sample {sample.key!r} segments[{i}]"
        if seg.kind == "text":
            if not (seg.text or "").strip():
                raise DecodeError("empty_text", f"{where}: text segment is empty or whitespace-only")
            segments.append(DecodedSegment("text", text=seg.text, meta=seg.meta, member=None, loss=seg.loss))
            continue
        member = seg.member or f"{i}.{seg.meta.get('ext', '?')}"
        ext = member.rsplit(".", 1)[-1].lower()
        allowed = IMAGE_EXTENSIONS if seg.kind == "image" else AUDIO_EXTENSIONS
        if ext not in allowed:
            raise DecodeError("bad_sample", f"{where}: {seg.kind} member {member!r} has extension {ext!r}")
        assert seg.data is not None  # Segment checks that media carries bytes
        try:
            if seg.kind == "image":
                image = decode_image(seg.data, limits.max_image_pixels)
                segments.append(DecodedSegment("image", image=image, meta=seg.meta, member=member))
            else:
                audio, rate = decode_audio(seg.data, limits.max_audio_seconds)
                segments.append(
                    DecodedSegment(
                        "audio", text=seg.text, audio=audio, sample_rate=rate, meta=seg.meta, member=member
                    )
                )
        except DecodeError as exc:
            raise DecodeError(exc.reason, f"{where} member {member}: {exc}") from None
    return DecodedSample(sample.key, sample.source, segments, dict(sample.meta))
