"""Build benchmark: espeak-ng synthesis speed and `mmpt data build` throughput.

1. TTS, one utterance at a time (one core busy at a time; ``--pin`` pins the process
   and its espeak-ng children to one CPU): the same 12-word spans of the built-in
   Shakespeare corpus (cut as ``--format tts-interleaved`` cuts them) synthesized to 16 kHz
   samples by the in-process library engine (libespeak-ng through ctypes,
   :mod:`mmpretrain.data.build.tts`) and by the subprocess baseline (one ``espeak-ng``
   process per utterance). Both are timed alternately, ``--repeats`` times, best kept;
   utterances per wall-clock second and per CPU second (this process and its children: the
   rate of one fully used core) are reported: on a shared machine other jobs move the
   first a lot, the second little. The issue's target is >= ~50 utterances/s on one core.
2. Build throughput, `mmpt data build` as a library call, with ``--workers 0`` and 2:
   ``tts-interleaved`` on the first Shakespeare documents (records/s and utterances/s),
   and ``captions`` on generated JSONL + JPEG pairs (640x480 gradients, shrunk to 512 px
   by the build). Each build is preceded by a 1-record build of the same kind, whose time
   (worker start-up: every worker process imports the package, torch included) gives the
   steady rate: records after the first / (time - that).

    python scripts/bench_build.py --quick     # ~2 minutes on 2 cores
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


def bench_tts(spans: list[str], repeats: int, pin: bool) -> dict[str, dict[str, float]]:
    """Best wall and CPU rates of both engines, timed alternately, one utterance at a time
    (``pin``: the process and its espeak-ng children on one CPU)."""
    pinned = pin and hasattr(os, "sched_setaffinity")
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
    """Records/s and utterances/s of one build (wall clock, worker start-up included), and
    the steady rate: records after the first over the time after a 1-record build's."""

    def run(limit: int | None) -> tuple[float, float, dict[str, Any]]:
        shutil.rmtree(out, ignore_errors=True)
        started, cpu = time.perf_counter(), _cpu_seconds()
        opts = BuildOptions(out=out, workers=workers, **{**options, "limit": limit})
        index = build_dataset(fmt, opts, progress=False)
        return time.perf_counter() - started, _cpu_seconds() - cpu, index

    startup, _, _ = run(1)
    seconds, cpu, index = run(options.get("limit"))
    records = index["build"]["records"]
    return {
        "seconds": seconds,
        "cpu_s": cpu,  # this process only: the whole build with 0 workers
        "startup_s": startup,
        "records_per_s": records / seconds,
        "steady_records_per_s": (records - 1) / max(seconds - startup, 1e-9),
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
    parser.add_argument("--quick", action="store_true", help="200 spans, 2 repeats, 30 documents, 300 images")
    parser.add_argument("--spans", type=int, help="utterances per TTS timing (default 600; --quick 200)")
    parser.add_argument(
        "--repeats", type=int, help="TTS timings per engine, best kept (default 3; --quick 2)"
    )
    parser.add_argument(
        "--documents", type=int, help="tts-interleaved build documents (default 80; --quick 30)"
    )
    parser.add_argument("--images", type=int, help="captions build images (default 1000; --quick 300)")
    parser.add_argument(
        "--pin", action="store_true", help="pin the TTS timing to one CPU (other jobs on it slow it down)"
    )
    args = parser.parse_args()
    n_spans = args.spans or (200 if args.quick else 600)
    repeats = args.repeats or (2 if args.quick else 3)
    n_docs = args.documents or (30 if args.quick else 80)
    n_images = args.images or (300 if args.quick else 1000)
    print(f"machine: {machine()}; load {load()}; TTS engine: {engine_name()}")

    spans = shakespeare_spans(n_spans)
    words = sum(len(s.split()) for s in spans) / len(spans)
    tts = bench_tts(spans, repeats, args.pin)
    where = "pinned to one CPU" if args.pin else "one utterance at a time"
    print(f"\nTTS ({where}): {len(spans)} Shakespeare spans, {words:.1f} words each, best of {repeats}")
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
        print(
            "| format | workers | records/s | utterances/s | seconds | 1-record build s | "
            "steady records/s | main-process CPU s |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name, run in runs:
            for workers in (0, 2):
                r = run(workers)
                builds[f"{name}/{workers}"] = r
                print(
                    f"| {name} | {workers} | {r['records_per_s']:.1f} | {r['utterances_per_s']:.1f} | "
                    f"{r['seconds']:.1f} | {r['startup_s']:.1f} | {r['steady_records_per_s']:.1f} | "
                    f"{r['cpu_s']:.1f} |"
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
        "tts_interleaved_utterances": builds["tts-interleaved/0"]["audio"],
        "tts_interleaved_records_per_s": round(builds["tts-interleaved/0"]["records_per_s"], 2),
        "tts_interleaved_records_per_s_2_workers": round(builds["tts-interleaved/2"]["records_per_s"], 2),
        "tts_interleaved_utterances_per_s": round(builds["tts-interleaved/0"]["utterances_per_s"], 1),
        "tts_interleaved_utterances_per_cpu_s": round(
            builds["tts-interleaved/0"]["audio"] / builds["tts-interleaved/0"]["cpu_s"], 1
        ),
        "tts_interleaved_utterances_per_s_2_workers": round(
            builds["tts-interleaved/2"]["utterances_per_s"], 1
        ),
        "captions_records_per_s": round(builds["captions/0"]["records_per_s"], 1),
        "captions_records_per_s_2_workers": round(builds["captions/2"]["records_per_s"], 1),
        "tts_interleaved_steady_records_per_s_2_workers": round(
            builds["tts-interleaved/2"]["steady_records_per_s"], 2
        ),
        "captions_steady_records_per_s_2_workers": round(builds["captions/2"]["steady_records_per_s"], 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
