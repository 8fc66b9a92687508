"""Build benchmark: espeak-ng synthesis speed and `mmpt data build` throughput.

1. TTS on one core (the process pinned to one CPU; espeak-ng processes inherit it): the
   same 12-word spans of the built-in Shakespeare corpus (cut as ``--format
   tts-interleaved`` cuts them) synthesized to 16 kHz samples by the in-process library
   engine (libespeak-ng through ctypes, :mod:`mmpretrain.data.build.tts`) and by the
   subprocess baseline (one ``espeak-ng`` process per utterance). Both are timed
   alternately, ``--repeats`` times, best kept; utterances per wall-clock second and per
   CPU second (this process and its children) are reported: on a shared machine other jobs
   move the first a lot, the second little. The issue's target is >= ~50 utterances/s.
2. Build throughput, `mmpt data build` as a library call, with ``--workers 0`` and 2:
   ``tts-interleaved`` on the first Shakespeare documents (records/s and utterances/s),
   and ``captions`` on generated JSONL + JPEG pairs (640x480 noise-free gradients, shrunk to
   512 px by the build).

    python scripts/bench_build.py --quick     # ~2 minutes
    python scripts/bench_build.py             # more spans, documents and images

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmpretrain.data.build.options import BuildOptions
from mmpretrain.data.build.runner import build_dataset
from mmpretrain.data.build.tts import Engine, engine_name, synthesize
from mmpretrain.data.build.tts_interleaved import split_spans
from mmpretrain.data.skips import SkipCounter
from mmpretrain.data.text_sources import iter_documents, source_from_path

SPAN_WORDS = 12


def machine() -> str:
    """Cores, CPU model, Python and espeak-ng versions, in one line."""
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} cores ({cpu}), {platform.machine()}, Python {platform.python_version()}"


def load() -> str:
    """The 1-minute load average."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def shakespeare_spans(count: int) -> list[str]:
    """The first ``count`` speakable spans of the Shakespeare corpus (12 words or fewer)."""
    spans: list[str] = []
    documents = iter_documents(source_from_path("shakespeare"), SkipCounter(max_skips=None))
    for document in documents:
        spans += [s.transcript for s in split_spans(document.text, SPAN_WORDS) if s.speakable]
        if len(spans) >= count:
            break
    return spans[:count]


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def time_engine(spans: list[str], engine: Engine) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, audio seconds) to synthesize ``spans`` with ``engine``."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    samples = sum(len(synthesize(text, engine=engine)) for text in spans)
    return time.perf_counter() - wall, _cpu_seconds() - cpu, samples / 16000


def bench_tts(spans: list[str], repeats: int) -> dict[str, dict[str, float]]:
    """Best wall and CPU rates of both engines on one core, timed alternately."""
    pinned = hasattr(os, "sched_setaffinity")
    if pinned:
        allowed = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(allowed)})
    try:
        synthesize("warm up", engine="library" if engine_name() == "library" else "subprocess")
        results: dict[str, dict[str, float]] = {}
        engines: list[Engine] = ["library", "subprocess"] if engine_name() == "library" else ["subprocess"]
        for _ in range(repeats):
            for engine in engines:
                wall, cpu, audio = time_engine(spans, engine)
                best = results.setdefault(engine, {"wall_s": wall, "cpu_s": cpu, "audio_s": audio})
                best["wall_s"], best["cpu_s"] = min(best["wall_s"], wall), min(best["cpu_s"], cpu)
    finally:
        if pinned:
            os.sched_setaffinity(0, allowed)
    for best in results.values():
        best["utterances_per_s"] = len(spans) / best["wall_s"]
        best["utterances_per_cpu_s"] = len(spans) / best["cpu_s"]
        best["cpu_ms_per_utterance"] = 1000 * best["cpu_s"] / len(spans)
        best["realtime_factor"] = best["audio_s"] / best["wall_s"]
    return results


def write_captions(root: Path, count: int) -> Path:
    """``count`` 640x480 JPEG gradients and a ``captions.jsonl`` naming them."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    lines = []
    for i in range(count):
        a, b, c = rng.uniform(0.1, 1.0, 3)
        pixels = np.stack([x * a / 2.5, y * b / 1.9, (x + y) * c / 4.4], axis=-1) % 256
        Image.fromarray(pixels.astype(np.uint8)).save(root / f"{i:05d}.jpg", quality=90)
        lines.append(json.dumps({"image": f"{i:05d}.jpg", "caption": f"a gradient number {i}"}))
    manifest = root / "captions.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def time_build(fmt: str, out: Path, workers: int, **options: Any) -> dict[str, float]:
    """Records/s, kept samples and audio clips of one build (wall clock, setup included)."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    index = build_dataset(fmt, BuildOptions(out=out, workers=workers, **options), progress=False)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "records_per_s": index["build"]["records"] / seconds,
        "samples": index["samples"],
        "audio": index["audio"],
        "utterances_per_s": index["audio"] / seconds,
    }


def _rows(results: dict[str, dict[str, float]]) -> Iterator[str]:
    for name, r in results.items():
        yield (
            f"| {name} | {r['utterances_per_s']:.1f} | {r['utterances_per_cpu_s']:.1f} | "
            f"{r['cpu_ms_per_utterance']:.1f} | "
            f"{r['realtime_factor']:.0f}x |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="200 spans, 2 repeats, 12 documents, 200 images")
    parser.add_argument("--spans", type=int, help="utterances per TTS timing (default 600; --quick 200)")
    parser.add_argument(
        "--repeats", type=int, help="TTS timings per engine, best kept (default 3; --quick 2)"
    )
    parser.add_argument(
        "--documents", type=int, help="tts-interleaved build documents (default 40; --quick 12)"
    )
    parser.add_argument("--images", type=int, help="captions build images (default 600; --quick 200)")
    args = parser.parse_args()
    n_spans = args.spans or (200 if args.quick else 600)
    repeats = args.repeats or (2 if args.quick else 3)
    n_docs = args.documents or (12 if args.quick else 40)
    n_images = args.images or (200 if args.quick else 600)
    print(f"machine: {machine()}; load {load()}; TTS engine: {engine_name()}")

    spans = shakespeare_spans(n_spans)
    words = sum(len(s.split()) for s in spans) / len(spans)
    tts = bench_tts(spans, repeats)
    print(f"\nTTS on one core: {len(spans)} Shakespeare spans, {words:.1f} words each, best of {repeats}")
    print("| engine | utterances/s | utterances/CPU-s | CPU ms/utterance | speed vs real time |")
    print("|---|---|---|---|---|")
    for row in _rows(tts):
        print(row)

    tmp = Path(tempfile.mkdtemp(prefix="bench_build-"))
    builds: dict[str, dict[str, float]] = {}
    try:
        runs: list[tuple[str, Callable[[int], dict[str, float]]]] = [
            (
                "tts-interleaved",
                lambda w: time_build(
                    "tts-interleaved", tmp / "tts", w, input=Path("shakespeare"), limit=n_docs
                ),
            ),
        ]
        manifest = write_captions(tmp / "captions", n_images)
        runs.append(("captions", lambda w: time_build("captions", tmp / "cap", w, input=manifest)))
        print(f"\nbuilds (load {load()}): tts-interleaved {n_docs} documents, captions {n_images} images")
        print("| format | workers | records/s | utterances/s | seconds |")
        print("|---|---|---|---|---|")
        for name, run in runs:
            for workers in (0, 2):
                r = run(workers)
                builds[f"{name}/{workers}"] = r
                print(
                    f"| {name} | {workers} | {r['records_per_s']:.1f} | "
                    f"{r['utterances_per_s']:.1f} | {r['seconds']:.1f} |"
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load after: {load()}")

    library = tts.get("library", tts["subprocess"])
    summary = {
        "bench": "build",
        "tts_engine": engine_name(),
        "tts_utterances_per_s": round(library["utterances_per_s"], 1),
        "tts_utterances_per_cpu_s": round(library["utterances_per_cpu_s"], 1),
        "tts_subprocess_utterances_per_s": round(tts["subprocess"]["utterances_per_s"], 1),
        "tts_subprocess_utterances_per_cpu_s": round(tts["subprocess"]["utterances_per_cpu_s"], 1),
        "tts_speedup": round(library["utterances_per_s"] / tts["subprocess"]["utterances_per_s"], 2),
        "tts_interleaved_records_per_s": round(builds["tts-interleaved/0"]["records_per_s"], 2),
        "tts_interleaved_records_per_s_2_workers": round(builds["tts-interleaved/2"]["records_per_s"], 2),
        "tts_interleaved_utterances_per_s": round(builds["tts-interleaved/0"]["utterances_per_s"], 1),
        "tts_interleaved_utterances_per_s_2_workers": round(
            builds["tts-interleaved/2"]["utterances_per_s"], 1
        ),
        "captions_records_per_s": round(builds["captions/0"]["records_per_s"], 1),
        "captions_records_per_s_2_workers": round(builds["captions/2"]["records_per_s"], 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
