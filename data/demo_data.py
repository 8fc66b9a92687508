"""The demo/fixture dataset: drawn shapes, true captions, counting questions and speech.

``mmpt data build --format demo`` writes it; tests, benchmarks and ``mmpt demo`` train and
evaluate on it. Everything comes from one seed and needs no download:

- a :class:`Scene` is 1-6 shapes (circle, square, triangle, star; 8 colours; small or
  large) in the cells of a 3x3 grid, so shapes never overlap and every position has a word
  ("top left", "center", ...);
- :func:`render_scene` draws it with PIL (RGB, 64 px by default, 4x supersampled);
- :func:`caption` and :func:`counting_qa` describe it, always truthfully: counts, colours,
  kinds, sizes and positions in the text are read off the scene itself. Answers are
  digits ("2", "0"), so exact-match scoring needs no number-word normalisation;
- :func:`speak` turns a sentence into 16 kHz mono FLAC with espeak-ng.

:func:`build_demo_dataset` writes the training shards plus ``index.json`` and a held-out
split in ``heldout/`` whose scenes never occur in the training shards.
"""

from __future__ import annotations

import bisect
import io
import itertools
import json
import math
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from PIL import Image, ImageDraw

from mmpretrain.errors import UserError

from .shard_io import ShardWriter
from .shard_schema import SCHEMA_VERSION
from .types import Sample, Segment

SHAPE_KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
    "white": (250, 250, 250),
    "black": (20, 20, 20),
}
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUND = (128, 128, 128)  # mid grey: every colour above stands out against it
GRID = 3
POSITIONS: dict[tuple[int, int], str] = {
    (row, col): " ".join(w for w in (("top", "", "bottom")[row], ("left", "", "right")[col]) if w) or "center"
    for row in range(GRID)
    for col in range(GRID)
}
"""Grid cell (row, col) -> its position word: (0, 0) "top left", (1, 1) "center", ..."""
_POSITION_PHRASES = {
    "top left": "in the top left corner",
    "top right": "in the top right corner",
    "bottom left": "in the bottom left corner",
    "bottom right": "in the bottom right corner",
    "top": "at the top",
    "bottom": "at the bottom",
    "left": "on the left",
    "right": "on the right",
    "center": "in the center",
}
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MAX_SHAPES = 6

SAMPLE_KINDS: tuple[str, ...] = ("caption", "vqa", "interleaved", "speech_caption", "spoken_sentence", "text")
DEFAULT_KINDS_MIX: dict[str, float] = {
    "caption": 0.3,
    "vqa": 0.2,
    "interleaved": 0.15,
    "speech_caption": 0.1,
    "spoken_sentence": 0.1,
    "text": 0.15,
}
IMAGE_SIZE = 64
SAMPLE_RATE = 16000
VOICES = ("en", "en-us")  # espeak-ng's own voices (no mbrola needed)
RATES = (140, 160, 180)  # words per minute
HELDOUT_FRACTION = 0.1
SOURCE = "demo"


# ------------------------------------------------------------------------------ scenes


@dataclass(frozen=True)
class Shape:
    """One shape in grid cell (``row``, ``col``), offset by ``dx``, ``dy`` (fractions of a cell)."""

    kind: str
    colour: str
    size: str
    row: int
    col: int
    dx: float = 0.0
    dy: float = 0.0

    @property
    def position(self) -> str:
        """Where it is, in words: "top left", "top", ..., "center", ..., "bottom right"."""
        return POSITIONS[(self.row, self.col)]


@dataclass
class Scene:
    """The shapes of one picture; at most one shape per grid cell."""

    shapes: list[Shape] = field(default_factory=list)

    def count(self, kind: str | None = None, colour: str | None = None) -> int:
        """How many shapes have this kind and/or colour (None: any)."""
        return sum(1 for s in self.shapes if kind in (None, s.kind) and colour in (None, s.colour))

    def groups(self) -> list[list[Shape]]:
        """The shapes grouped by (kind, colour), in order of first appearance."""
        out: dict[tuple[str, str], list[Shape]] = {}
        for s in self.shapes:
            out.setdefault((s.kind, s.colour), []).append(s)
        return list(out.values())

    def signature(self) -> tuple[tuple[str, str, str, int, int], ...]:
        """What the scene shows, ignoring the small offsets: equal signatures, same picture."""
        return tuple(sorted((s.kind, s.colour, s.size, s.row, s.col) for s in self.shapes))

    def to_meta(self) -> list[dict[str, str]]:
        """JSON-ready description (stored in each image segment's meta for evaluation)."""
        return [
            {"kind": s.kind, "colour": s.colour, "size": s.size, "position": s.position} for s in self.shapes
        ]


def random_scene(rng: random.Random) -> Scene:
    """1-3 groups of same-kind, same-colour shapes (1-3 each, at most 6 shapes) in random cells."""
    pairs = [(k, c) for k in SHAPE_KINDS for c in COLOURS]
    n_groups = rng.choice((1, 1, 2, 2, 2, 3))
    cells = rng.sample(sorted(POSITIONS), GRID * GRID)
    shapes: list[Shape] = []
    for kind, colour in rng.sample(pairs, n_groups):
        count = min(rng.choice((1, 1, 2, 2, 3)), MAX_SHAPES - len(shapes))
        size = rng.choice(SIZES)
        mixed = rng.random() < 0.2  # sizes differ within the group: the caption names none
        for _ in range(count):
            row, col = cells.pop()
            dx, dy = (round(rng.uniform(-0.05, 0.05), 3) for _ in range(2))
            shapes.append(Shape(kind, colour, rng.choice(SIZES) if mixed else size, row, col, dx, dy))
    return Scene(shapes)


def render_scene(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``scene`` as a ``size`` x ``size`` RGB image (drawn at 4x, box-downsampled)."""
    if size < 16:
        raise ValueError(f"render_scene: size must be at least 16 px, got {size}")
    scale = 4
    big = size * scale
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = big / GRID
    for s in scene.shapes:
        cx, cy = (s.col + 0.5 + s.dx) * cell, (s.row + 0.5 + s.dy) * cell
        r = cell * (0.42 if s.size == "large" else 0.26)
        fill = COLOURS[s.colour]
        if s.kind == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif s.kind == "square":
            h = r * 0.85  # about the area of the circle
            draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
        elif s.kind == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=fill)
        elif s.kind == "star":
            points = []
            for i in range(10):
                radius = r if i % 2 == 0 else 0.45 * r
                angle = -math.pi / 2 + i * math.pi / 5
                points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
            draw.polygon(points, fill=fill)
        else:
            raise ValueError(f"render_scene: unknown shape kind {s.kind!r}; expected one of {SHAPE_KINDS}")
    return image.resize((size, size), Image.Resampling.BOX)


def png_bytes(image: Image.Image) -> bytes:
    """``image`` as PNG bytes (no metadata chunks, so equal images give equal bytes)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


# ------------------------------------------------------------------------------ text


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _group_phrase(group: list[Shape]) -> str:
    first, n = group[0], len(group)
    sizes = {s.size for s in group}
    words = ([sizes.pop()] if len(sizes) == 1 else []) + [first.colour, first.kind + ("s" if n > 1 else "")]
    if n == 1:
        article = "an" if words[0][0] in "aeiou" else "a"
        return f"{article} {' '.join(words)} {_POSITION_PHRASES[first.position]}"
    place = ""
    if all(s.col == 0 for s in group):
        place = " on the left"
    elif all(s.col == GRID - 1 for s in group):
        place = " on the right"
    elif all(s.row == 0 for s in group):
        place = " at the top"
    elif all(s.row == GRID - 1 for s in group):
        place = " at the bottom"
    return f"{NUMBER_WORDS[n]} {' '.join(words)}{place}"


def describe(scene: Scene) -> str:
    """The caption without capital or full stop: "two red circles and a small blue star at the top"."""
    if not scene.shapes:
        return "nothing but a grey background"
    return _join([_group_phrase(g) for g in scene.groups()])


def caption(scene: Scene) -> str:
    """A true one-sentence caption: "Two red circles and a small blue square on the left."

    Each (kind, colour) group is named once with its count; its size when all its shapes
    share one; its position when it has one shape (or all share a side of the grid).
    """
    text = describe(scene)
    return text[0].upper() + text[1:] + "."


def count_sentence(scene: Scene) -> str:
    """A true counting sentence: "There are three shapes: two circles and one star."."""
    total = len(scene.shapes)
    kinds = [(k, scene.count(kind=k)) for k in SHAPE_KINDS if scene.count(kind=k)]
    if total == 1:
        return f"There is one shape: a {scene.shapes[0].kind}."
    parts = [f"{NUMBER_WORDS[n]} {k}{'s' if n > 1 else ''}" for k, n in kinds]
    return f"There are {NUMBER_WORDS[total]} shapes: {_join(parts)}."


def counting_qa(scene: Scene, rng: random.Random | None = None) -> tuple[str, str]:
    """A counting question and its answer as digits: ("How many circles are there?", "2").

    Without ``rng`` it asks about the first shape's kind. With ``rng`` it asks about a kind
    in the scene (60%), a kind not in it (15%, answer "0") or a colour (25%).
    """
    if not scene.shapes:
        raise ValueError("counting_qa: the scene has no shapes")
    if rng is None:
        kind = scene.shapes[0].kind
        return f"How many {kind}s are there?", str(scene.count(kind=kind))
    roll = rng.random()
    present = sorted({s.kind for s in scene.shapes})
    absent = [k for k in SHAPE_KINDS if k not in present]
    if roll < 0.25:
        colour = rng.choice(sorted({s.colour for s in scene.shapes}))
        return f"How many {colour} shapes are there?", str(scene.count(colour=colour))
    kind = rng.choice(absent if roll < 0.4 and absent else present)
    return f"How many {kind}s are there?", str(scene.count(kind=kind))


# ------------------------------------------------------------------------------ speech


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise UserError(
            "espeak-ng is not installed; the demo data speaks its sentences with it: "
            "install espeak-ng (make setup does it as root, or `apt-get install espeak-ng`)"
        )
    return exe


def _parse_wav(raw: bytes) -> tuple[np.ndarray, int]:
    """16-bit PCM mono samples and rate of espeak-ng's WAV output.

    espeak-ng writes to a pipe, so its header sizes are placeholders (0x7ffff000): the data
    chunk is taken to run to the end of the bytes.
    """
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise UserError("espeak-ng did not write a WAV file to stdout; check `espeak-ng --version`")
    pos, rate, channels, bits = 12, 0, 0, 0
    while pos + 8 <= len(raw):
        chunk, size = raw[pos : pos + 4], int.from_bytes(raw[pos + 4 : pos + 8], "little")
        body = pos + 8
        if chunk == b"fmt ":
            channels = int.from_bytes(raw[body + 2 : body + 4], "little")
            rate = int.from_bytes(raw[body + 4 : body + 8], "little")
            bits = int.from_bytes(raw[body + 14 : body + 16], "little")
        elif chunk == b"data":
            if (channels, bits) != (1, 16) or rate <= 0:
                raise UserError(f"espeak-ng wrote {channels}-channel {bits}-bit audio; expected mono 16-bit")
            data = raw[body : body + min(size, len(raw) - body)]
            return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.float64), rate
        pos = body + size + (size & 1)
    raise UserError("espeak-ng's WAV output has no data chunk")


def resample(audio: np.ndarray, rate_in: int, rate_out: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a 1-D signal: ``scipy.signal.resample_poly`` if scipy is installed, else numpy.

    The numpy fallback low-passes with a 63-tap Hamming-windowed sinc below the new Nyquist
    frequency and interpolates linearly; fine for speech, a little duller than scipy's.
    """
    if rate_in == rate_out:
        return audio
    g = math.gcd(rate_in, rate_out)
    try:
        from scipy.signal import resample_poly
    except ImportError:
        return _resample_numpy(audio, rate_in, rate_out)
    return np.asarray(resample_poly(audio, rate_out // g, rate_in // g))


def _resample_numpy(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_out < rate_in:
        cutoff = 0.45 * rate_out / rate_in  # cycles per input sample, just below Nyquist
        n = np.arange(63) - 31
        taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(63)
        audio = np.convolve(audio, taps / taps.sum(), mode="same")
    times = np.arange(round(len(audio) * rate_out / rate_in)) * (rate_in / rate_out)
    return np.interp(times, np.arange(len(audio)), audio)


def speech_samples(text: str, voice: str = "en", rate: int = 160) -> np.ndarray:
    """``text`` spoken by espeak-ng as 16 kHz mono int16 samples."""
    if not text.strip():
        raise ValueError("speak: text is empty")
    # An argument list, no shell; "--" so that text starting with "-" is not an option.
    cmd = [_espeak(), "--stdout", "-v", voice, "-s", str(rate), "--", text]
    proc = subprocess.run(cmd, capture_output=True, check=False, timeout=120)
    if proc.returncode != 0 or not proc.stdout:
        message = proc.stderr.decode("utf-8", "replace").strip() or f"exit code {proc.returncode}"
        raise UserError(f"espeak-ng failed for voice {voice!r}: {message}")
    audio, rate_in = _parse_wav(proc.stdout)
    audio = resample(audio, rate_in, SAMPLE_RATE)
    return np.clip(np.round(audio), -32768, 32767).astype(np.int16)


def flac_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """Mono int16 ``samples`` encoded as 16-bit FLAC."""
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def speak(text: str, voice: str = "en", rate: int = 160) -> bytes:
    """``text`` spoken by espeak-ng (``voice``, ``rate`` words per minute) as 16 kHz mono FLAC.

    espeak-ng's 22050 Hz output is resampled with :func:`resample`. Raises
    :class:`UserError` when espeak-ng is missing or fails.
    """
    return flac_bytes(speech_samples(text, voice, rate))


# ------------------------------------------------------------------------------ samples


class DemoGenerator:
    """Makes demo samples from one seed; scenes in ``exclude`` (signatures) are never drawn."""

    def __init__(self, seed: int | str, exclude: frozenset[tuple[Any, ...]] = frozenset()):
        self.rng = random.Random(seed)  # str seeds hash with sha512: stable across runs
        self.exclude = exclude
        self.signatures: set[tuple[Any, ...]] = set()  # of every scene drawn
        self._meta: dict[str, Any] = {}
        self._builders: dict[str, Callable[[], list[Segment]]] = {
            "caption": self._caption,
            "vqa": self._vqa,
            "interleaved": self._interleaved,
            "speech_caption": self._speech_caption,
            "spoken_sentence": self._spoken_sentence,
            "text": self._text,
        }

    def sample(self, kind: str, key: str) -> Sample:
        """One sample of ``kind`` (one of :data:`SAMPLE_KINDS`) under ``key``."""
        self._meta = {"kind": kind}
        segments = self._builders[kind]()
        for i, seg in enumerate(segments):  # members are named by segment index
            if seg.member is not None:
                seg.member = f"{i}.{seg.member}"
        return Sample(key=key, source=SOURCE, segments=segments, meta=self._meta)

    def scene(self) -> Scene:
        for _ in range(10_000):
            scene = random_scene(self.rng)
            if scene.signature() not in self.exclude:
                self.signatures.add(scene.signature())
                return scene
        raise RuntimeError("DemoGenerator: every scene drawn was excluded")

    def _image(self, scene: Scene) -> Segment:
        meta = {"width": IMAGE_SIZE, "height": IMAGE_SIZE, "shapes": scene.to_meta()}
        return Segment("image", data=png_bytes(render_scene(scene)), meta=meta, member="png")

    def _audio(self, text: str) -> Segment:
        voice, rate = self.rng.choice(VOICES), self.rng.choice(RATES)
        samples = speech_samples(text, voice, rate)
        seconds = round(len(samples) / SAMPLE_RATE, 3)
        meta = {"sample_rate": SAMPLE_RATE, "seconds": seconds, "voice": voice, "rate": rate}
        return Segment("audio", text=text, data=flac_bytes(samples), meta=meta, member="flac")

    def _caption(self) -> list[Segment]:
        scene = self.scene()
        return [self._image(scene), Segment("text", text=caption(scene))]

    def _vqa(self) -> list[Segment]:
        scene = self.scene()
        question, answer = counting_qa(scene, self.rng)
        self._meta.update(question=question, answer=answer)
        return [self._image(scene), Segment("text", text=f"Question: {question} Answer: {answer}")]

    def _interleaved(self) -> list[Segment]:
        scenes = [self.scene() for _ in range(self.rng.randint(2, 4))]
        n = NUMBER_WORDS[len(scenes)]
        intro = self.rng.choice(
            (f"Here are {n} pictures of shapes.", f"A page with {n} pictures.", "Look at these pictures.")
        )
        total = sum(len(s.shapes) for s in scenes)
        outro = self.rng.choice(
            (f"Altogether the pictures show {total} shapes.", "That is the end of the page.", "")
        )
        segments = [Segment("text", text=intro)]
        for i, scene in enumerate(scenes):
            text = caption(scene) + (" " + outro if i == len(scenes) - 1 and outro else "")
            segments += [self._image(scene), Segment("text", text=text)]
        return segments

    def _speech_caption(self) -> list[Segment]:
        text = caption(self.scene())
        return [self._audio(text), Segment("text", text=text)]

    def _spoken_sentence(self) -> list[Segment]:
        scene = self.scene()
        text = caption(scene) if self.rng.random() < 0.5 else count_sentence(scene)
        order = self.rng.choice(("text_audio", "audio_text"))
        self._meta["order"] = order
        pair = [Segment("text", text=text), self._audio(text)]
        return pair if order == "text_audio" else pair[::-1]

    def _text(self) -> list[Segment]:
        scenes = [self.scene() for _ in range(self.rng.randint(2, 4))]
        ordinals = ("first", "second", "third", "fourth")
        sentences = [f"The {ordinals[i]} picture shows {describe(s)}." for i, s in enumerate(scenes)]
        total = sum(len(s.shapes) for s in scenes)
        sentences.append(f"In total there are {total} shapes in the {NUMBER_WORDS[len(scenes)]} pictures.")
        return [Segment("text", text=" ".join(sentences))]


def kind_schedule(n: int, mix: dict[str, float]) -> list[str]:
    """``n`` sample kinds in proportion to ``mix``, evenly interleaved (weighted round robin).

    The first ``len(mix)`` samples are one of each kind (heaviest first), so that even a
    tiny build holds every kind; after that each sample goes to the kind furthest behind
    its share.
    """
    total = sum(mix.values())
    counts = dict.fromkeys(mix, 0)
    out = []
    first = sorted(mix, key=lambda k: -mix[k])
    for i in range(n):
        behind = max(mix, key=lambda k: mix[k] / total * (i + 1) - counts[k])
        kind = first[i] if i < len(first) else behind
        counts[kind] += 1
        out.append(kind)
    return out


# ------------------------------------------------------------------------------ building


def _clean(out: Path) -> None:
    """Remove what an earlier build wrote here (shards, index.json), nothing else."""
    for path in [*out.glob("shard-*.tar"), *out.glob("shard-*.tar.tmp"), out / "index.json"]:
        if path.is_file():
            path.unlink()


def _stats(sample: Sample) -> dict[str, float]:
    segs = sample.segments
    return {
        "images": sum(seg.kind == "image" for seg in segs),
        "audio": sum(seg.kind == "audio" for seg in segs),
        "audio_seconds": sum(seg.meta.get("seconds", 0.0) for seg in segs if seg.kind == "audio"),
        "chars": sum(len(seg.text or "") for seg in segs if seg.kind == "text"),
    }


def _write_split(
    out: Path,
    split: str,
    gen: DemoGenerator,
    samples: int,
    shards: int,
    mix: dict[str, float],
    progress: bool,
) -> dict[str, Any]:
    """Write ``samples`` samples as ``min(shards, samples)`` evenly filled shards; return the index."""
    _clean(out)
    n_shards = min(shards, samples)
    # Largest shards first: lowering max_samples at each boundary then starts the next shard.
    sizes = [samples // n_shards + (1 if j < samples % n_shards else 0) for j in range(n_shards)]
    ends = list(itertools.accumulate(sizes))
    totals: list[Counter[str]] = [Counter() for _ in sizes]
    kinds: Counter[str] = Counter()
    with ShardWriter(out, prefix="shard", max_samples=sizes[0], max_bytes=1 << 62) as writer:
        for i, kind in enumerate(kind_schedule(samples, mix)):
            j = bisect.bisect_right(ends, i)
            writer.max_samples = sizes[j]
            sample = gen.sample(kind, f"{split}/{i:06d}")
            writer.write(sample)
            kinds[kind] += 1
            totals[j].update(_stats(sample))
            if progress and i + 1 == ends[j]:
                print(f"demo {split}: {i + 1}/{samples} samples", file=sys.stderr)
    if writer.samples_per_shard != sizes:  # ShardWriter split a shard by size on its own
        raise RuntimeError(f"demo {split}: wrote shards of {writer.samples_per_shard}, expected {sizes}")
    entries: list[dict[str, Any]] = [
        {
            "path": path.name,
            "samples": n,
            "text_tokens_est": round(t["chars"] / 4),  # ~4 characters per token
            "images": int(t["images"]),
            "audio": int(t["audio"]),
            "audio_seconds": round(t["audio_seconds"], 3),
            "bytes": path.stat().st_size,
        }
        for path, n, t in zip(writer.shards, sizes, totals, strict=True)
    ]
    total = {k: sum(e[k] for e in entries) for k in ("images", "audio", "text_tokens_est", "bytes")}
    return {
        "format_version": 1,
        "schema_version": SCHEMA_VERSION,
        "split": split,
        "shards": entries,
        "samples": samples,
        "kinds": {k: kinds[k] for k in mix if kinds[k]},
        **total,
        "audio_seconds": round(sum(e["audio_seconds"] for e in entries), 3),
    }


def _check_options(samples: int, shards: int, mix: dict[str, float]) -> None:
    if samples < 1:
        raise UserError(f"--samples must be at least 1, got {samples}")
    if shards < 1:
        raise UserError(f"--shards must be at least 1, got {shards}")
    unknown = sorted(set(mix) - set(SAMPLE_KINDS))
    if unknown:
        raise UserError(f"unknown demo sample kind(s) {unknown}; kinds: {', '.join(SAMPLE_KINDS)}")
    if any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise UserError(f"kinds_mix weights must be >= 0 with a positive sum, got {mix}")


def build_demo_dataset(
    out: Path,
    samples: int = 600,
    shards: int = 4,
    seed: int = 0,
    kinds_mix: dict[str, float] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the demo dataset into ``out``; return its ``index.json`` content.

    ``out`` gets ``shard-000000.tar`` ... (``min(shards, samples)`` shards, evenly filled,
    the first ones one sample larger) and ``index.json``; ``out/heldout/`` gets a held-out
    split of ``ceil(samples / 10)`` samples from its own seed, redrawn wherever a scene
    equals a training scene, so evaluation never sees a training picture. Shards and
    images are byte-for-byte reproducible from ``seed``; earlier shards and index files in
    ``out`` are replaced (other files are left alone).
    """
    started = time.perf_counter()
    mix = dict(DEFAULT_KINDS_MIX if kinds_mix is None else kinds_mix)
    _check_options(samples, shards, mix)
    mix = {k: w for k, w in mix.items() if w > 0}
    out = Path(out)
    train_gen = DemoGenerator(seed)
    index = _write_split(out, "train", train_gen, samples, shards, mix, progress)
    heldout_seed = f"mmpretrain-demo-heldout-{seed}"
    heldout_gen = DemoGenerator(heldout_seed, exclude=frozenset(train_gen.signatures))
    heldout_samples = math.ceil(samples * HELDOUT_FRACTION)
    heldout = _write_split(out / "heldout", "heldout", heldout_gen, heldout_samples, shards, mix, progress)
    from mmpretrain import __version__

    build: dict[str, Any] = {
        "format": "demo",
        "input": None,
        "skipped": 0,
        "errors_by_reason": {},
        "seed": seed,
        "options": {"samples": samples, "shards": shards, "seed": seed, "kinds_mix": mix},
        "speech": {"tts": "espeak-ng", "voices": list(VOICES), "sample_rate": SAMPLE_RATE},
        "mmpretrain_version": __version__,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    heldout["build"] = {**build, "seed": heldout_seed}
    heldout["note"] = "held-out split of the dataset in ..: none of its scenes occurs in its training shards"
    (out / "heldout" / "index.json").write_text(json.dumps(heldout, indent=2) + "\n", encoding="utf-8")
    index["heldout"] = {
        "path": "heldout",
        "samples": heldout["samples"],
        "shards": len(heldout["shards"]),
        "seed": heldout_seed,
        "note": "own seed; scenes equal to a training scene are redrawn, so no training picture is in it",
    }
    build["seconds"] = round(time.perf_counter() - started, 2)
    index["build"] = build
    (out / "index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return index
