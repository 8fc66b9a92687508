"""Loader benchmark: the full image-text input path against a bare PIL loop.

On image-text shards it writes itself (seeded JPEGs of 256-512 px with smooth random
content -- gradients, blurred shapes, a little sensor-like noise -- quality 90, each with
a caption), it measures samples/s of

- the full path: :class:`MediaBatchStream` (read shard, parse and validate ``KEY.json``,
  decode, preprocess with ``StandInImageProcessor(size=224, patch=14)`` -- 256 tokens per
  image --, tokenize with a BPE trained on the captions, pack into ``seq_len`` 4096 with at
  most 8 images per pack, lay out ``batch_size`` 8 batches), with 0 and 2 reader workers;
- a bare loop over the same tar members (``tarfile`` streaming; for each ``.jpg``:
  ``PIL.Image.open(...).convert("RGB").resize((224, 224))`` and the same [-1, 1] float
  tensor as the stand-in processor): the same pixel work, nothing else.

``loader_ratio`` = full single-worker samples/s / bare samples/s (target >= 0.8, aim 0.9);
``worker_scaling`` = 2-worker samples/s / 0-worker samples/s, next to ``bare_scaling``, the
bare loop run in 2 processes over half the shards each / in one: what the machine gives two
busy processes at that moment (a small shared machine rarely gives 2x; the main process
competes with the workers too). Audio-text shards (espeak-ng speech as 16 kHz FLAC) are
measured separately: the full path with ``StandInAudioProcessor`` (batch 1, one packing
round per pass) against bare ``soundfile`` decoding gives ``audio_loader_ratio``.

Every measurement runs with ``torch.set_num_threads(1)`` (a per-core comparison), after a
warm-up that reads every shard once (same file cache for both sides); each is repeated
(interleaved) and the best is kept; the load average before and after is printed. CPU time
per sample (all processes) is reported too, with ``loader_cpu_ratio`` = bare / full CPU ms
per sample: on a shared machine other jobs move wall-clock rates a lot, CPU time little.
Samples of the full path are counted from the batches' keys until one pass over the shards
came out (``--images`` a multiple of ``--buffer-docs`` makes that exact). With ``--profile``
(or when ``loader_ratio`` < 0.8) a stage split of the full path (CPU time), reader-only
rates with 0 and 2 workers, what-ifs (a uint8 processor, a smaller packing round) and a
cProfile of one single-worker pass are printed.

    python scripts/bench_loader.py --quick     # ~2 minutes: 1024 images, 60 audio clips
    python scripts/bench_loader.py             # 3072 images, 200 audio clips, 3 repeats

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import math
import os
import platform
import pstats
import random
import resource
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import soundfile
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from mmpretrain.data.decoders import DecodeLimits, decode_sample
from mmpretrain.data.layout import LossMask, MediaDocument, MediaItem, MediaTokenIds, layout_batch
from mmpretrain.data.media_packing import MediaPacker, PackBudget
from mmpretrain.data.media_pipeline import (
    MediaBatchStream,
    MediaDataConfig,
    MediaProcessor,
    StandInAudioProcessor,
    StandInImageProcessor,
)
from mmpretrain.data.reader import ReaderConfig
from mmpretrain.data.shard_io import ShardWriter
from mmpretrain.data.shard_schema import parse_sample_json, sample_from_json
from mmpretrain.data.tokenizer import TextTokenizer, train_bpe
from mmpretrain.data.types import Sample, Segment
from mmpretrain.errors import UserError

IMAGE_SIZE = 224
PATCH = 14
MIN_SIDE, MAX_SIDE = 256, 512
JPEG_QUALITY = 90
IMAGE_SHARDS = 4
AUDIO_SHARDS = 2
VOCAB_SIZE = 320

# ------------------------------------------------------------------------------ data

COLORS = {
    "red": (214, 48, 49),
    "green": (46, 160, 67),
    "blue": (41, 98, 255),
    "yellow": (242, 201, 76),
    "purple": (142, 68, 173),
    "orange": (230, 126, 34),
    "white": (245, 245, 240),
    "black": (25, 25, 30),
    "grey": (127, 140, 141),
    "pink": (253, 121, 168),
    "brown": (121, 85, 61),
    "teal": (0, 150, 136),
}
SHAPES = ("circle", "square", "triangle", "ellipse", "rectangle", "blob")


def _place(x: float, y: float) -> str:
    row = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else "middle"
    col = "left" if x < 1 / 3 else "right" if x > 2 / 3 else "center"
    return "center" if (row, col) == ("middle", "center") else f"{row} {col}"


class ImageMaker:
    """Seeded synthetic pictures: a two-colour gradient, 2-7 shapes, a light blur and a
    little noise (so the JPEGs compress like simple photos, not like flat drawings)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.noise = self.rng.normal(0.0, 5.0, (2 * MAX_SIDE, 2 * MAX_SIDE, 3)).astype(np.float32)

    def make(self) -> tuple[bytes, str, tuple[int, int]]:
        rng = self.rng
        w, h = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
        names = list(COLORS)
        top, bottom = rng.choice(len(names), size=2, replace=False)
        c0 = np.array(COLORS[names[top]], np.float32)
        c1 = np.array(COLORS[names[bottom]], np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = xx * math.cos(angle) + yy * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        base = c0 + t[..., None] * (c1 - c0)
        image = Image.fromarray(base.astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        parts = []
        for _ in range(int(rng.integers(2, 8))):
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            color = names[int(rng.integers(len(names)))]
            fill = tuple(int(c) for c in np.clip(np.array(COLORS[color]) + rng.normal(0, 12, 3), 0, 255))
            r = float(rng.uniform(0.06, 0.3)) * min(w, h)
            cx, cy = float(rng.uniform(0, w)), float(rng.uniform(0, h))
            if shape in ("circle", "square"):
                box = (cx - r, cy - r, cx + r, cy + r)
            else:
                box = (cx - r, cy - 0.6 * r, cx + r, cy + 0.6 * r)
            if shape in ("circle", "ellipse"):
                draw.ellipse(box, fill=fill)
            elif shape in ("square", "rectangle"):
                draw.rectangle(box, fill=fill)
            else:
                corners = 3 if shape == "triangle" else int(rng.integers(5, 9))
                turn = rng.uniform(0, 2 * math.pi)
                radii = [r] * corners if shape == "triangle" else rng.uniform(0.5, 1.0, corners) * r
                draw.polygon(
                    [
                        (
                            cx + rad * math.cos(turn + 2 * math.pi * k / corners),
                            cy + rad * math.sin(turn + 2 * math.pi * k / corners),
                        )
                        for k, rad in enumerate(radii)
                    ],
                    fill=fill,
                )
            size = "large" if r > 0.18 * min(w, h) else "small"
            parts.append(f"a {size} {color} {shape} at the {_place(cx / w, cy / h)}")
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.6, 2.0))))
        oy, ox = int(rng.integers(0, 2 * MAX_SIDE - h + 1)), int(rng.integers(0, 2 * MAX_SIDE - w + 1))
        noisy = np.asarray(image, np.float32) + self.noise[oy : oy + h, ox : ox + w]
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=JPEG_QUALITY)
        caption = f"{', '.join(parts).capitalize()}, on a {names[top]} to {names[bottom]} gradient."
        return buf.getvalue(), caption, (w, h)


WORDS = {  # space-separated word lists
    "adj": "quick quiet bright old young small large green heavy gentle careful sleepy",
    "noun": "fox river teacher robot garden engine window city dog student market ship",
    "verb": "watches crosses follows paints finds carries opens visits builds hears",
    "prep": "near behind beside under across above",
}


def sentence(rng: random.Random) -> str:
    """A short random English sentence for the speech clips."""
    words = {k: v.split() for k, v in WORDS.items()}
    extra = rng.choice(["", " in the morning", " every day", " after the rain", " with great care"])
    adj, noun = words["adj"], words["noun"]
    return (
        f"The {rng.choice(adj)} {rng.choice(noun)} {rng.choice(words['verb'])} the {rng.choice(adj)} "
        f"{rng.choice(noun)} {rng.choice(words['prep'])} the {rng.choice(noun)}{extra}."
    )


def _write_shards(
    out: Path, prefix: str, samples: Iterator[Sample], n: int, shards: int, seed: int
) -> list[Path]:
    """``n`` samples into ``shards`` evenly filled shards, plus the ``index.json`` the reader uses."""
    per = math.ceil(n / shards)
    with ShardWriter(out, prefix=prefix, max_samples=per, max_bytes=1 << 40) as writer:
        for sample in samples:
            writer.write(sample)
    index = {
        "bench": {"prefix": prefix, "samples": n, "seed": seed},
        "shards": [
            {"path": p.name, "samples": c, "bytes": p.stat().st_size}
            for p, c in zip(writer.shards, writer.samples_per_shard, strict=True)
        ],
    }
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    return writer.shards


def _existing(out: Path, n: int, seed: int) -> list[Path] | None:
    """The shards of an earlier build of ``n`` samples from ``seed`` in ``out`` (None: build again)."""
    try:
        index = json.loads((out / "index.json").read_text(encoding="utf-8"))
        paths = [out / e["path"] for e in index["shards"]]
        if (index["bench"]["samples"], index["bench"]["seed"]) == (n, seed) and all(
            p.stat().st_size == e["bytes"] for p, e in zip(paths, index["shards"], strict=True)
        ):
            return paths
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def build_images(out: Path, n: int, seed: int) -> tuple[list[Path], float]:
    shards = _existing(out, n, seed)
    if shards is not None:
        return shards, 0.0
    start = time.perf_counter()
    maker = ImageMaker(seed)

    def samples() -> Iterator[Sample]:
        for i in range(n):
            jpeg, caption, (w, h) = maker.make()
            image = Segment(kind="image", data=jpeg, meta={"ext": "jpg", "width": w, "height": h})
            yield Sample(f"{i:06d}", "bench-images", [image, Segment(kind="text", text=caption)])

    return _write_shards(out, "img", samples(), n, IMAGE_SHARDS, seed), time.perf_counter() - start


def build_audio(out: Path, n: int, seed: int) -> tuple[list[Path], float]:
    from mmpretrain.data.demo_speech import RATES, VOICES, speak

    shards = _existing(out, n, seed)
    if shards is not None:
        return shards, 0.0
    start = time.perf_counter()
    rng = random.Random(seed)

    def samples() -> Iterator[Sample]:
        for i in range(n):
            text = sentence(rng)
            flac = speak(text, voice=rng.choice(VOICES), rate=rng.choice(RATES))
            info = soundfile.info(io.BytesIO(flac))
            audio = Segment(
                kind="audio", text=text, data=flac, meta={"ext": "flac", "seconds": info.duration}
            )
            yield Sample(f"{i:06d}", "bench-speech", [audio, Segment(kind="text", text=text)])

    return _write_shards(out, "speech", samples(), n, AUDIO_SHARDS, seed), time.perf_counter() - start


def tar_members(shards: list[Path], suffix: str | None = None) -> Iterator[tuple[str, bytes]]:
    """``(name, bytes)`` of every member (ending in ``suffix``), streamed in tar order."""
    for shard in shards:
        with tarfile.open(shard, mode="r|") as tar:
            for member in tar:
                if member.isfile() and (suffix is None or member.name.endswith(suffix)):
                    fileobj = tar.extractfile(member)
                    assert fileobj is not None
                    yield member.name, fileobj.read()


def texts_of(shards: list[Path]) -> list[str]:
    """The text segments of the shards' samples (to train the tokenizer on)."""
    out = []
    for _, raw in tar_members(shards, ".json"):
        out += [s["text"] for s in json.loads(raw)["segments"] if s["kind"] == "text"]
    return out


def tokenizer_for(texts: list[str]) -> TextTokenizer:
    """A small byte-level BPE of the shards' text (byte-level only when the text is too small)."""
    try:
        return train_bpe(texts, VOCAB_SIZE)
    except UserError:
        return train_bpe(texts, 256)


# ------------------------------------------------------------------------------ measuring


def to_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """Exactly the tensor work of StandInImageProcessor.preprocess after its resize (uint8
    pixels, as every encoder's preprocess yields; normalisation runs in the encoder)."""
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return pixels.permute(2, 0, 1).contiguous()


def bare_images(shards: list[Path], size: int = IMAGE_SIZE) -> int:
    """Bare loop: PIL decode + the same resize + the same uint8 pixel tensor."""
    n = 0
    for _, data in tar_members(shards, ".jpg"):
        image = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size))
        to_pixels(image, size)
        n += 1
    return n


def bare_audio(shards: list[Path]) -> int:
    """Bare loop: soundfile decode of every FLAC member to float32."""
    n = 0
    for _, data in tar_members(shards, ".flac"):
        soundfile.read(io.BytesIO(data), dtype="float32")
        n += 1
    return n


def _bare_part(shards: list[Path]) -> tuple[int, float, float]:
    start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
    n = bare_images(shards)
    return n, start, time.perf_counter()


def time_bare_parallel(shards: list[Path], procs: int) -> Run:
    """The bare loop in ``procs`` processes, each over its share of the shards: what this
    machine gives ``procs`` busy processes right now (the ceiling for worker scaling)."""
    children = _child_cpu()
    with get_context("fork").Pool(procs) as pool:
        parts = pool.map(_bare_part, [shards[i::procs] for i in range(procs)])
        pool.close()
        pool.join()
    seconds = max(p[2] for p in parts) - min(p[1] for p in parts)
    return Run(sum(p[0] for p in parts), seconds, child_cpu=_child_cpu() - children)


@dataclass
class Run:
    samples: int
    seconds: float
    batches: int = 0
    fill: float = 0.0  # fraction of token slots holding documents
    main_cpu: float = 0.0  # CPU seconds of the main process
    child_cpu: float = 0.0  # CPU seconds of reader worker processes (joined after the run)

    @property
    def rate(self) -> float:
        return self.samples / self.seconds

    @property
    def cpu_ms(self) -> float:
        """CPU milliseconds per sample, all processes together."""
        return 1e3 * (self.main_cpu + self.child_cpu) / self.samples


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_bare(fn: Callable[[], int], repeat: int = 1) -> Run:
    start, cpu = time.perf_counter(), time.process_time()
    n = sum(fn() for _ in range(repeat))
    return Run(n, time.perf_counter() - start, main_cpu=time.process_time() - cpu)


@dataclass
class FullPath:
    """One configuration of the full path: MediaBatchStream over ``shards``."""

    shards: list[Path]
    tokenizer: TextTokenizer
    processors: dict[str, MediaProcessor]
    seq_len: int
    batch_size: int
    buffer_docs: int
    shuffle_buffer: int = 0
    seed: int = 0

    def stream(self, workers: int) -> MediaBatchStream:
        cfg = MediaDataConfig(
            reader=ReaderConfig(
                shards=[str(s) for s in self.shards],
                shuffle_buffer=self.shuffle_buffer,
                num_workers=workers,
            ),
            buffer_docs=self.buffer_docs,
        )
        return MediaBatchStream(
            cfg, self.tokenizer, self.processors, self.seq_len, self.batch_size, self.seed
        )

    def run(
        self, workers: int, samples: int, validate: bool = False, profiler: cProfile.Profile | None = None
    ) -> Run:
        """Time batches until ``samples`` documents (counted from the batches' keys) came out."""
        stream = self.stream(workers)
        children = _child_cpu()
        start, cpu = time.perf_counter(), time.process_time()
        batches = docs = real = slots = 0
        if profiler is not None:
            profiler.enable()
        it = stream.batches()
        for batch, _ in it:
            docs += sum(len(row) for row in batch.keys)
            real += int((batch.doc_ids >= 0).sum())
            slots += batch.doc_ids.numel()
            batches += 1
            if validate and batches == 1:
                batch.validate()
            if docs >= samples:
                break
        seconds, main_cpu = time.perf_counter() - start, time.process_time() - cpu
        if profiler is not None:
            profiler.disable()
        it.close()
        del it, stream
        gc.collect()  # runs the reader's finally: worker processes are shut down and joined
        return Run(docs, seconds, batches, real / max(slots, 1), main_cpu, _child_cpu() - children)


def best(runs: list[Run]) -> Run:
    return max(runs, key=lambda r: r.rate)


# ------------------------------------------------------------------------------ profile


@dataclass(frozen=True)
class Uint8ImageProcessor:
    """What-if processor (injected, like any encoder's): the stand-in's resize, but the
    tensor stays uint8 [3, size, size]; the [-1, 1] normalisation would run on the device."""

    size: int = IMAGE_SIZE
    patch: int = PATCH
    modality: str = "image"

    def preprocess(self, segment: Any) -> torch.Tensor:
        image = segment.image.convert("RGB").resize((self.size, self.size))
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        return pixels.view(self.size, self.size, 3).permute(2, 0, 1)

    def num_tokens(self, inputs: torch.Tensor) -> int:
        return (inputs.shape[-1] // self.patch) * (inputs.shape[-2] // self.patch)


STAGES = ("tar_read", "json_parse_validate", "decode", "preprocess", "tokenize", "pack", "layout")
EXTRAS = ("bare_decode", "bare_resize_tensor", "bare_resize_uint8", "image_copies", "stack", "pil_transfer")


def stage_split(path: FullPath, limits: DecodeLimits) -> dict[str, float]:
    """CPU milliseconds per sample of each stage of the full path, run stage by stage (shard
    by shard) with the library's own functions, next to the bare loop's two halves and a few
    parts of those stages: ``image_copies`` (the three full-size copies decode + preprocess
    make of an RGB JPEG without EXIF: exif_transpose's copy and two convert("RGB")),
    ``stack`` (torch.stack of the float pixels inside layout) and ``pil_transfer``
    (tobytes + frombytes: what pickling a decoded image to the main process costs)."""
    proc = path.processors["image"]
    tok = path.tokenizer
    ids = MediaTokenIds.from_tokenizer(tok)
    packer = MediaPacker(seq_len=path.seq_len, budget=PackBudget(8), buffer_docs=path.buffer_docs)
    t = dict.fromkeys(STAGES + EXTRAS, 0.0)
    n = 0

    def clock(stage: str, start: float) -> float:
        now = time.process_time()
        t[stage] += now - start
        return now

    for shard in path.shards:
        start = time.process_time()
        groups: dict[str, dict[str, bytes]] = {}
        for name, data in tar_members([shard]):
            key, _, suffix = name.partition(".")
            groups.setdefault(key, {})[suffix] = data
        start = clock("tar_read", start)
        samples = []
        for key, members in groups.items():
            raw = members.pop("json")
            obj = parse_sample_json(key, raw, members={"json", *members})
            samples.append(sample_from_json(key, obj, members))
        start = clock("json_parse_validate", start)
        decoded = [decode_sample(s, limits) for s in samples]
        start = clock("decode", start)
        inputs = [proc.preprocess(d.segments[0]) for d in decoded]
        start = clock("preprocess", start)
        tokens = [tok.encode(d.segments[1].text or "") for d in decoded]
        start = clock("tokenize", start)
        docs = [
            MediaDocument(d.key, [MediaItem("image", proc.num_tokens(x), x), text, [tok.eos_id]])
            for d, x, text in zip(decoded, inputs, tokens, strict=True)
        ]
        packs = packer.pack_round(docs)
        start = clock("pack", start)
        for i in range(0, len(packs), path.batch_size):
            layout_batch(packs[i : i + path.batch_size], path.seq_len, tok.pad_id, ids, LossMask())
        start = clock("layout", start)
        for i in range(0, len(inputs), path.batch_size * 8):
            torch.stack(inputs[i : i + path.batch_size * 8])
        start = clock("stack", start)
        del inputs, docs, packs
        images = [d.segments[0].image for d in decoded]
        for image in images:
            assert image is not None
            ImageOps.exif_transpose(image).convert("RGB").convert("RGB")
        start = clock("image_copies", start)
        for image in images:
            assert image is not None
            Image.frombytes(image.mode, image.size, image.tobytes())
        start = clock("pil_transfer", start)
        del decoded, images
        bare = [Image.open(io.BytesIO(members["0.jpg"])).convert("RGB") for members in groups.values()]
        start = clock("bare_decode", start)
        for image in bare:
            to_pixels(image.resize((IMAGE_SIZE, IMAGE_SIZE)), IMAGE_SIZE)
        start = clock("bare_resize_tensor", start)
        for image in bare:
            small = image.resize((IMAGE_SIZE, IMAGE_SIZE))
            torch.frombuffer(bytearray(small.tobytes()), dtype=torch.uint8).view(IMAGE_SIZE, IMAGE_SIZE, 3)
        clock("bare_resize_uint8", start)
        n += len(groups)
    return {k: v / n * 1e3 for k, v in t.items()}


def reader_only(path: FullPath, workers: int, samples: int) -> Run:
    """ShardReader.samples() alone (read, parse, decode; no preprocess/tokenize/pack)."""
    reader = path.stream(workers).reader
    children = _child_cpu()
    start, cpu = time.perf_counter(), time.process_time()
    n = 0
    it = reader.samples()
    for _ in it:
        n += 1
        if n >= samples:
            break
    seconds, main_cpu = time.perf_counter() - start, time.process_time() - cpu
    it.close()
    del it, reader
    gc.collect()
    return Run(n, seconds, main_cpu=main_cpu, child_cpu=_child_cpu() - children)


def cprofile_run(path: FullPath, samples: int, top: int = 20) -> str:
    profile = cProfile.Profile()
    path.run(0, samples, profiler=profile)
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    return "\n".join(lines[start:])


def profile_report(
    path: FullPath, bare_cpu: float, full_cpu: float, workers: int, samples: int, repeats: int, pairs: int
) -> dict[str, Any]:
    """Where the full path's time goes (printed), and what-ifs with injected processors or
    another packing round. All in CPU time per sample (a shared machine's other load moves
    wall-clock rates a lot, CPU time little); what-ifs are timed in pairs with the as-is path."""
    passes = [stage_split(path, DecodeLimits()) for _ in range(repeats)]
    split = {k: min(p[k] for p in passes) for k in passes[0]}
    staged = sum(split[k] for k in STAGES)
    print(f"stage split, CPU ms per sample (each stage run alone over all shards, best of {repeats}):")
    for k in STAGES:
        print(f"  {k:<22} {split[k]:7.3f}")
    print(f"  {'sum of stages':<22} {staged:7.3f}")
    print(
        f"  {'stream glue':<22} {full_cpu - staged:7.3f}  (full path {full_cpu:.3f} minus the sum: "
        f"reader/packer generators, per-sample state, the {path.buffer_docs}-document live set)"
    )
    bare_parts = split["tar_read"] + split["bare_decode"] + split["bare_resize_tensor"]
    print(
        f"bare loop {bare_cpu:.3f} (parts: tar read {split['tar_read']:.3f} + PIL decode "
        f"{split['bare_decode']:.3f} + resize/tensor {split['bare_resize_tensor']:.3f} = {bare_parts:.3f}); "
        f"full path over bare: {full_cpu - bare_cpu:+.3f}"
    )
    print(
        f"  parts: 3 full-size image copies {split['image_copies']:.3f}, torch.stack of float pixels "
        f"{split['stack']:.3f} (in layout), PIL image transfer to the main process "
        f"{split['pil_transfer']:.3f}"
    )
    r0 = best([reader_only(path, 0, samples) for _ in range(repeats)])
    rw = best([reader_only(path, workers, samples) for _ in range(repeats)])
    print(
        f"reader only (read+parse+decode): 0 workers {r0.rate:.0f}/s ({r0.cpu_ms:.2f} CPU ms/sample), "
        f"{workers} workers {rw.rate:.0f}/s ({rw.cpu_ms:.2f} CPU ms/sample: main process "
        f"{1e3 * rw.main_cpu / rw.samples:.2f} receiving, workers {1e3 * rw.child_cpu / rw.samples:.2f})"
    )
    what_if = {}
    float_ms = split["bare_resize_tensor"] - split["bare_resize_uint8"]
    uint8 = {"image": Uint8ImageProcessor()}
    for name, variant in (
        ("uint8_processor", FullPath(**{**vars(path), "processors": uint8})),
        ("buffer_docs_64", FullPath(**{**vars(path), "buffer_docs": 64})),
        (
            "uint8_processor+buffer_docs_64",
            FullPath(**{**vars(path), "processors": uint8, "buffer_docs": 64}),
        ),
    ):
        base_runs, runs = [], []
        for i in range(pairs):  # alternate which goes first
            order = [(path, base_runs), (variant, runs)]
            for config, out in order if i % 2 == 0 else order[::-1]:
                out.append(config.run(0, samples))
        base_ms, ms = min(r.cpu_ms for r in base_runs), min(r.cpu_ms for r in runs)
        # A uint8 path leaves the float conversion to the device: compare it with a bare loop
        # that also stops at uint8.
        bare_ms = bare_cpu - float_ms if "uint8" in name else bare_cpu
        what_if[name] = round(bare_ms / ms, 3)
        print(
            f"what-if {name}: {ms:.2f} CPU ms/sample vs as-is {base_ms:.2f} side by side "
            f"(x{base_ms / ms:.3f}); loader_cpu_ratio would be ~{what_if[name]:.3f}"
            + (f" (vs a bare loop stopping at uint8, {bare_ms:.2f})" if "uint8" in name else "")
        )
    print(f"\ncProfile of one 0-worker pass ({path.buffer_docs} samples), by own time:")
    print(cprofile_run(path, path.buffer_docs))
    return {
        "stages_ms": {k: round(v, 3) for k, v in split.items()},
        "glue_ms": round(full_cpu - staged, 3),
        "reader_only_samples_per_s": round(r0.rate, 1),
        f"reader_only_{workers}w_samples_per_s": round(rw.rate, 1),
        "reader_only_cpu_ms": {"0w": round(r0.cpu_ms, 2), f"{workers}w": round(rw.cpu_ms, 2)},
        "what_if_loader_cpu_ratio": what_if,
    }


# ------------------------------------------------------------------------------ main


def machine() -> str:
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cores} cores ({cpu}), {platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} thread), Pillow {PIL.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1024 images, 60 audio clips, 2 repeats")
    parser.add_argument("--images", type=int, help="image-text samples (default 3072; --quick 1024)")
    parser.add_argument("--audio-clips", type=int, help="audio-text samples (default 200; --quick 60)")
    parser.add_argument("--repeats", type=int, help="timed repetitions, best kept (default 3; --quick 2)")
    parser.add_argument("--workers", type=int, default=2, help="reader workers of the scaling run")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--buffer-docs", type=int, default=512, help="packing round (MediaDataConfig default 512)"
    )
    parser.add_argument("--shuffle-buffer", type=int, default=0, help="reader shuffle block (0: in order)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, help="build shards here and reuse them (default: temp dir)")
    parser.add_argument("--profile", action="store_true", help="stage split + cProfile even if ratio >= 0.8")
    parser.add_argument("--no-audio", action="store_true")
    args = parser.parse_args()
    n_images = args.images or (1024 if args.quick else 3072)
    n_audio = args.audio_clips or (60 if args.quick else 200)
    repeats = args.repeats or (2 if args.quick else 3)
    if n_images % args.buffer_docs:
        print(
            f"note: {n_images} images is not a multiple of --buffer-docs {args.buffer_docs}: the last "
            "packing round reaches into the next epoch, whose samples are read but not all counted"
        )

    # The tokenizer is trained (with Rust threads) before DataLoader forks its workers.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)
    print(f"machine: {machine()}")

    tmp = None
    root = args.data_dir
    if root is None:
        tmp = tempfile.mkdtemp(prefix="bench_loader-")
        root = Path(tmp)
    try:
        summary = bench(args, root, n_images, n_audio, repeats)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(summary))


def bench(args: argparse.Namespace, root: Path, n_images: int, n_audio: int, repeats: int) -> dict[str, Any]:
    image_shards, built = build_images(root / "images", n_images, args.seed)
    sizes = [len(data) for _, data in tar_members(image_shards, ".jpg")]  # also warms the file cache
    total_mb = sum(p.stat().st_size for p in image_shards) / 2**20
    print(
        f"image-text shards: {n_images} samples in {len(image_shards)} shards ({total_mb:.1f} MiB), "
        f"JPEG {MIN_SIDE}-{MAX_SIDE} px q{JPEG_QUALITY}, mean {np.mean(sizes) / 1024:.1f} KiB "
        f"({f'built in {built:.1f} s' if built else 'reused'})"
    )
    audio_shards: list[Path] = []
    texts = texts_of(image_shards)
    if not args.no_audio:
        audio_shards, built = build_audio(root / "audio", n_audio, args.seed)
        texts += texts_of(audio_shards)
    tokenizer = tokenizer_for(texts)
    image_tokens = (IMAGE_SIZE // PATCH) ** 2
    path = FullPath(
        image_shards,
        tokenizer,
        {"image": StandInImageProcessor(size=IMAGE_SIZE, patch=PATCH)},
        args.seq_len,
        args.batch_size,
        args.buffer_docs,
        args.shuffle_buffer,
        args.seed,
    )
    workers = args.workers

    # Warm-up: code paths, allocator, the worker start-up path.
    bare_images(image_shards[:1])
    warm = FullPath(image_shards[:1], tokenizer, path.processors, args.seq_len, args.batch_size, 64)
    warm.run(0, 64, validate=True)
    warm.run(workers, 64)

    bare_runs: list[Run] = []
    bare_par: list[Run] = []
    full0: list[Run] = []
    full2: list[Run] = []
    load_before = os.getloadavg()[0]
    for _ in range(repeats):  # interleaved, so slow spells of a shared machine hit all of them
        bare_runs.append(time_bare(lambda: bare_images(image_shards)))
        full0.append(path.run(0, n_images))
        full2.append(path.run(workers, n_images))
        bare_par.append(time_bare_parallel(image_shards, workers))
    load_after = os.getloadavg()[0]
    bare, f0, f2, bp = best(bare_runs), best(full0), best(full2), best(bare_par)
    loader_ratio = f0.rate / bare.rate
    worker_scaling = f2.rate / f0.rate
    # CPU time per sample (all processes) hardly depends on waiting for a busy CPU.
    cpu = {
        k: min(r.cpu_ms for r in runs)
        for k, runs in (("bare", bare_runs), ("full", full0), ("full_w", full2))
    }
    bare_scaling = bp.rate / bare.rate

    print(
        f"\nimage-text: {n_images} samples/pass, {image_tokens} tokens per image, seq_len {args.seq_len}, "
        f"batch {args.batch_size}, buffer_docs {args.buffer_docs}, shuffle_buffer {args.shuffle_buffer}, "
        f"best of {repeats}"
    )
    print(f"{'path':<40} {'samples/s':>10} {'ms/sample':>10} {'CPU ms/sample':>14} {'main busy %':>12}  runs")
    rows = [
        ("bare loop (PIL decode+resize+tensor)", bare, bare_runs),
        (f"bare loop in {workers} processes", bp, bare_par),
        ("full path, 0 workers", f0, full0),
        (f"full path, {workers} workers", f2, full2),
    ]
    for name, r, runs in rows:
        all_runs = " ".join(f"{x.rate:.0f}" for x in runs)
        busy = f"{100 * r.main_cpu / r.seconds:.0f}" if r.main_cpu else "-"
        print(f"{name:<40} {r.rate:>10.1f} {1e3 / r.rate:>10.2f} {r.cpu_ms:>14.2f} {busy:>12}  {all_runs}")
    print(
        f"loader_ratio {loader_ratio:.3f} (target >= 0.8, aim 0.9); worker_scaling ({workers} workers / 0) "
        f"{worker_scaling:.3f}; the bare loop scales {bare_scaling:.3f} in {workers} processes on this "
        f"{len(os.sched_getaffinity(0))}-core machine (load average {load_before:.2f} before, "
        f"{load_after:.2f} after); token fill {f0.fill:.3f}, {f0.batches} batches per pass"
    )
    print(
        f"per CPU time (less sensitive to other load; best of the runs): bare {cpu['bare']:.2f} ms/sample, "
        f"full path {cpu['full']:.2f} (loader_cpu_ratio {cpu['bare'] / cpu['full']:.3f}), {workers} workers "
        f"{cpu['full_w']:.2f} over all processes"
    )

    summary: dict[str, Any] = {
        "bench": "loader",
        "images": n_images,
        "image_tokens": image_tokens,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "bare_samples_per_s": round(bare.rate, 1),
        "full_samples_per_s": round(f0.rate, 1),
        f"full_{workers}w_samples_per_s": round(f2.rate, 1),
        "loader_ratio": round(loader_ratio, 3),
        "worker_scaling": round(worker_scaling, 3),
        "bare_scaling": round(bare_scaling, 3),
        "workers": workers,
        "loader_cpu_ratio": round(cpu["bare"] / cpu["full"], 3),
        "cpu_ms_per_sample": {
            "bare": round(cpu["bare"], 2),
            "full": round(cpu["full"], 2),
            f"full_{workers}w": round(cpu["full_w"], 2),
        },
        "load_average": [round(load_before, 2), round(load_after, 2)],
        "token_fill": round(f0.fill, 4),
        "jpeg_kib": round(float(np.mean(sizes)) / 1024, 1),
    }

    if audio_shards:
        summary.update(bench_audio(args, audio_shards, tokenizer, n_audio, repeats))

    if loader_ratio < 0.8 or args.profile:
        why = "loader_ratio < 0.8" if loader_ratio < 0.8 else "--profile"
        print(f"\nprofile ({why}):")
        pairs = 1 if args.quick else repeats
        summary.update(profile_report(path, cpu["bare"], cpu["full"], workers, n_images, repeats, pairs))

    summary["machine"] = machine()
    return summary


def bench_audio(
    args: argparse.Namespace, shards: list[Path], tokenizer: TextTokenizer, n: int, repeats: int
) -> dict[str, Any]:
    """Audio-text: the full path (batch 1, one packing round per pass) against bare soundfile.
    Timings are short, so twice as many repeats as the image measurements."""
    seconds = sum(soundfile.info(io.BytesIO(d)).duration for _, d in tar_members(shards, ".flac"))
    passes = max(1, math.ceil(600 / n))  # each timing covers >= 600 clips
    path = FullPath(shards, tokenizer, {"audio": StandInAudioProcessor()}, args.seq_len, 1, n, 0, args.seed)
    bare_audio(shards)
    path.run(0, n, validate=True)
    bare_runs, full_runs = [], []
    for _ in range(2 * repeats):
        bare_runs.append(time_bare(lambda: bare_audio(shards), passes))
        full_runs.append(path.run(0, n * passes))
    bare, full = best(bare_runs), best(full_runs)
    ratio = full.rate / bare.rate
    cpu_ratio = min(r.cpu_ms for r in bare_runs) / min(r.cpu_ms for r in full_runs)
    print(
        f"\naudio-text: {n} clips ({seconds:.0f} s of 16 kHz FLAC speech, mean {seconds / n:.1f} s), "
        f"{passes} passes per timing, batch 1, best of {2 * repeats}"
    )
    print(f"{'path':<40} {'samples/s':>10} {'ms/sample':>10} {'CPU ms/sample':>14}  runs")
    for name, r, runs in (
        ("bare loop (soundfile decode)", bare, bare_runs),
        ("full path, 0 workers", full, full_runs),
    ):
        all_runs = " ".join(f"{x.rate:.0f}" for x in runs)
        print(f"{name:<40} {r.rate:>10.1f} {1e3 / r.rate:>10.3f} {r.cpu_ms:>14.3f}  {all_runs}")
    print(f"audio_loader_ratio {ratio:.3f} (per CPU time {cpu_ratio:.3f})")
    return {
        "audio_clips": n,
        "audio_bare_samples_per_s": round(bare.rate, 1),
        "audio_full_samples_per_s": round(full.rate, 1),
        "audio_loader_ratio": round(ratio, 3),
        "audio_loader_cpu_ratio": round(cpu_ratio, 3),
    }


if __name__ == "__main__":
    main()
