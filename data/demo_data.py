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
import itertools
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mmpretrain.errors import UserError

from .demo_scenes import (
    IMAGE_SIZE,
    NUMBER_WORDS,
    Scene,
    caption,
    count_sentence,
    counting_qa,
    describe,
    png_bytes,
    random_scene,
    render_scene,
)
from .demo_speech import RATES, SAMPLE_RATE, VOICES, flac_bytes, speech_samples
from .shard_io import ShardWriter
from .shard_schema import SCHEMA_VERSION
from .types import Sample, Segment

SAMPLE_KINDS: tuple[str, ...] = ("caption", "vqa", "interleaved", "speech_caption", "spoken_sentence", "text")
DEFAULT_KINDS_MIX: dict[str, float] = {
    "caption": 0.3,
    "vqa": 0.2,
    "interleaved": 0.15,
    "speech_caption": 0.1,
    "spoken_sentence": 0.1,
    "text": 0.15,
}
HELDOUT_FRACTION = 0.1
SOURCE = "demo"


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
    sizes = [samples // n_shards + (1 if j < samples % n_shards else 0) for j in range(n_shards)]
    ends = list(itertools.accumulate(sizes))
    totals: list[Counter[str]] = [Counter() for _ in sizes]
    kinds: Counter[str] = Counter()
    with ShardWriter(out, prefix="shard", max_samples=max(sizes), max_bytes=1 << 62) as writer:
        for i, kind in enumerate(kind_schedule(samples, mix)):
            j = bisect.bisect_right(ends, i)
            if i > 0 and i == ends[j - 1]:
                writer.next_shard()
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
