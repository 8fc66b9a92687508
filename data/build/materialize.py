"""Worker side of a build: read, check, resize and encode a record's media.

:func:`materialize` turns a :class:`SourceRecord` into a shard :class:`Sample` (or a
:class:`RecordSkip` saying why not). It runs in worker processes, so it takes only
picklable arguments and touches no shared state. Images are decoded once, EXIF-rotated,
converted to RGB and shrunk to ``max_image_side`` (JPEG files decode straight at the
reduced size); files that need no change keep their original bytes. Audio is mixed to
mono, resampled to 16 kHz and stored as 16-bit FLAC; ``speak`` segments are synthesized.
With ``--tokenize-media`` a media segment also gets its media tokenizer's codes in
``meta["codes"]`` (see :mod:`.media_codes`).
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mmpretrain.data.decoders import DecodeError, _exif_transposed, _pil_header_only, _pil_message, _to_rgb
from mmpretrain.data.demo_speech import SAMPLE_RATE, flac_bytes, resample
from mmpretrain.data.media_vocab import STORED_CODES_KEY
from mmpretrain.data.types import Sample, Segment

from .media_codes import codes_meta
from .options import BuildOptions
from .records import RecordSegment, RecordSkip, SourceRecord

MAX_SOURCE_FILE_BYTES = 256 * 1024 * 1024
"""Largest media file a build reads."""

MAX_SOURCE_PIXELS = 16384 * 16384
"""Largest source image a build decodes (it is shrunk to ``max_image_side`` anyway)."""

_KEEP_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


@dataclass(frozen=True)
class Materialized:
    """A built sample, where its record came from, and the content hash of each of its
    media segments, in order."""

    sample: Sample
    where: str
    media_hashes: tuple[str, ...]


class _Skip(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _read_file(segment: RecordSegment) -> bytes:
    if segment.data is not None:
        return segment.data
    assert segment.path is not None
    reason = f"missing_{segment.kind}"
    try:
        size = segment.path.stat().st_size
    except FileNotFoundError:
        raise _Skip(reason, f"{segment.kind} file {segment.path} does not exist") from None
    except OSError as exc:
        raise _Skip(reason, f"cannot read {segment.path}: {exc.strerror or exc}") from None
    if size > MAX_SOURCE_FILE_BYTES:
        raise _Skip(
            f"{segment.kind}_too_large", f"{segment.path} is {size} bytes (limit {MAX_SOURCE_FILE_BYTES})"
        )
    try:
        return segment.path.read_bytes()
    except OSError as exc:
        raise _Skip(reason, f"cannot read {segment.path}: {exc.strerror or exc}") from None


def encode_image(raw: bytes, max_side: int) -> tuple[bytes, str, int, int]:
    """Image file bytes -> (bytes, extension, width, height) with the longer side at most
    ``max_side``; raises :class:`DecodeError` (``bad_image``, ``image_too_large``)."""
    try:
        with _pil_header_only():
            image = Image.open(io.BytesIO(raw))
    except Exception as exc:
        raise DecodeError("bad_image", f"not a readable image: {_pil_message(exc)}") from None
    width, height = image.size
    if width < 1 or height < 1 or width * height > MAX_SOURCE_PIXELS:
        raise DecodeError("image_too_large", f"image is {width}x{height} (limit {MAX_SOURCE_PIXELS} pixels)")
    source_format = image.format or ""
    scale = min(1.0, max_side / max(width, height))
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    try:
        with _pil_header_only():
            if scale < 1.0 and source_format == "JPEG":
                image.draft("RGB", target)  # DCT scaling: decode at (at least) the target size
            image.load()
            oriented = _exif_transposed(image)
            rgb = _to_rgb(oriented)
    except Exception as exc:
        raise DecodeError("bad_image", f"corrupt or truncated image: {_pil_message(exc)}") from None
    unchanged = scale == 1.0 and oriented is image and rgb is image and source_format in _KEEP_FORMATS
    if unchanged:
        return raw, _KEEP_FORMATS[source_format], width, height
    if oriented is not image:  # rotated by 90 degrees: width and height swap
        target = target if oriented.size[0] == image.size[0] else (target[1], target[0])
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=90)
    return out.getvalue(), "jpg", rgb.size[0], rgb.size[1]


def encode_audio(raw: bytes, max_seconds: float) -> tuple[bytes, float]:
    """Audio file bytes (FLAC, WAV, OGG, MP3: what libsndfile reads) -> 16 kHz mono FLAC and
    its duration; raises :class:`_Skip` (``bad_audio``, ``empty_audio``, ``audio_too_long``)."""
    import soundfile

    try:
        wave, rate = soundfile.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile reports truncation and unknown formats alike
        raise _Skip("bad_audio", f"not readable audio: {type(exc).__name__}: {exc}") from None
    if wave.shape[0] == 0:
        raise _Skip("empty_audio", "the audio file holds no samples")
    seconds = wave.shape[0] / rate
    if seconds > max_seconds:
        raise _Skip("audio_too_long", f"{seconds:.1f} s, over --max-audio-seconds {max_seconds:g}")
    mono = wave.mean(axis=1).astype(np.float64)
    if not np.isfinite(mono).all():
        raise _Skip("bad_audio", "the audio holds NaN or infinite samples")
    mono = resample(mono, int(rate), SAMPLE_RATE) * 32767.0
    samples = np.clip(np.round(mono), -32768, 32767).astype(np.int16)
    return flac_bytes(samples), samples.shape[0] / SAMPLE_RATE


def _speech(segment: RecordSegment, options: BuildOptions) -> tuple[bytes, float]:
    from .tts import synthesize

    assert segment.speak is not None
    samples = synthesize(segment.speak, options.voice, options.tts_rate)
    return flac_bytes(samples), samples.shape[0] / SAMPLE_RATE


def _media_segment(segment: RecordSegment, index: int, options: BuildOptions) -> tuple[Segment, str]:
    meta = dict(segment.meta)
    if segment.kind == "image":
        try:
            data, ext, width, height = encode_image(_read_file(segment), options.max_image_side)
        except DecodeError as exc:
            raise _Skip(exc.reason, f"{segment.path or 'image'}: {exc}") from None
        meta.update(width=width, height=height)
    elif segment.speak is not None:
        data, seconds = _speech(segment, options)
        ext = "flac"
        meta.update(seconds=round(seconds, 3), sample_rate=SAMPLE_RATE, tts="espeak-ng", voice=options.voice)
    else:
        try:
            data, seconds = encode_audio(_read_file(segment), options.max_audio_seconds)
        except _Skip as exc:
            raise _Skip(exc.reason, f"{segment.path or 'audio'}: {exc}") from None
        ext = "flac"
        meta.update(seconds=round(seconds, 3), sample_rate=SAMPLE_RATE)
    if options.tokenize_media:  # early fusion: the tokenizer's codes, computed once here
        stored = codes_meta(segment.kind, data, dict(options.tokenize_media))
        if stored is not None:
            meta[STORED_CODES_KEY] = stored
    digest = hashlib.sha256(data).hexdigest()
    built = Segment(segment.kind, text=segment.text, data=data, meta=meta, member=f"{index}.{ext}")
    return built, digest


def materialize(record: SourceRecord, options: BuildOptions) -> Materialized | RecordSkip:
    """Read and encode every media segment of ``record``; a :class:`RecordSkip` if one fails."""
    segments: list[Segment] = []
    hashes: list[str] = []
    try:
        for index, segment in enumerate(record.segments):
            if segment.kind == "text":
                if segment.text and segment.text.strip():
                    segments.append(
                        Segment("text", text=segment.text, loss=segment.loss, meta=dict(segment.meta))
                    )
                continue
            built, digest = _media_segment(segment, index, options)
            segments.append(built)
            hashes.append(digest)
    except _Skip as exc:
        return RecordSkip(exc.reason, record.where, str(exc))
    if not segments:
        return RecordSkip("empty_record", record.where, "the record has no text and no media")
    source = options.source or record.meta.get("source") or "dataset"
    meta = {k: v for k, v in record.meta.items() if k != "source"}
    meta["origin"] = record.where  # provenance: input file and line of the record
    return Materialized(Sample(record.key, str(source), segments, meta), record.where, tuple(hashes))


def audio_seconds(sample: Sample) -> float:
    """Total audio duration of a built sample (from its segment metadata)."""
    return math.fsum(float(seg.meta.get("seconds", 0.0)) for seg in sample.segments if seg.kind == "audio")
