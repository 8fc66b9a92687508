"""Fit a ``speech_units`` tokenizer: audio shards -> encoder features -> k-means -> directory.

:func:`fit_speech_units` reads the audio segments of the input shards in shard order (up
to ``fit.max_clips``), keeps the features of ``encoder.feature_layer`` for every frame,
fits ``k`` centroids on all frames or a seeded sample of ``fit.max_frames`` of them,
writes the tokenizer directory and ``fit.json`` (frames, k, inertia, seconds, units per
second of audio before and after run-length de-duplication), and checks that the
tokenizer loaded back from the directory gives the same units.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.encoders.kmeans import fit_kmeans
from mmpretrain.encoders.media_tokenizer import MANIFEST, WEIGHTS, load_media_tokenizer
from mmpretrain.encoders.speech_units import SpeechUnitsConfig, SpeechUnitTokenizer, dedup_runs
from mmpretrain.errors import UserError

REPORT = "fit.json"
OUTPUT_FILES = (MANIFEST, WEIGHTS, REPORT)
"""Files a speech-unit tokenizer directory holds (``--overwrite`` replaces them)."""

PROGRESS_EVERY_S = 10.0
"""Seconds between progress lines on stderr while encoding clips."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse a file or a non-empty directory as ``--out`` unless ``overwrite`` (which removes
    the tokenizer files an earlier run left there)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--out {out} is not empty; pass --overwrite to replace its tokenizer files")
        for name in OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)


@dataclass
class AudioReadStats:
    """What reading the input gave: clips used, their seconds, samples skipped."""

    clips: int = 0
    seconds: float = 0.0
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        """Count one skipped sample under ``reason``."""
        self.skipped += 1
        self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + 1


def audio_segments(shards: str, max_clips: int | None, stats: AudioReadStats) -> Iterator[DecodedSegment]:
    """Decoded audio segments of the shards matching ``shards``, in shard order, at most
    ``max_clips``; undecodable samples are counted in ``stats`` and skipped."""
    from mmpretrain.data.decoders import DecodeError, decode_sample
    from mmpretrain.data.error_budget import SkipEvent
    from mmpretrain.data.shard_stream import expand_shards, shard_outcomes

    for shard in expand_shards(shards):
        for _, outcome in shard_outcomes(shard):
            if isinstance(outcome, SkipEvent):
                stats.skip(outcome.reason)
                continue
            if not any(seg.kind == "audio" for seg in outcome.segments):
                continue
            try:
                sample = decode_sample(outcome)
            except DecodeError as exc:
                stats.skip(exc.reason)
                continue
            for segment in sample.segments:
                if segment.kind != "audio" or segment.audio is None or not segment.sample_rate:
                    continue
                if max_clips is not None and stats.clips >= max_clips:
                    return
                stats.clips += 1
                stats.seconds += len(segment.audio) / segment.sample_rate
                yield segment


def _encode_clips(
    tokenizer: SpeechUnitTokenizer,
    clips: Iterator[DecodedSegment],
    stats: AudioReadStats,
    log: Callable[[str], None],
) -> list[torch.Tensor]:
    """Frame features of every clip, with a progress line every ``PROGRESS_EVERY_S``."""
    features: list[torch.Tensor] = []
    last = time.monotonic()
    for segment in clips:
        features.append(tokenizer.frame_features(segment))
        if time.monotonic() - last >= PROGRESS_EVERY_S:
            last = time.monotonic()
            frames = sum(len(f) for f in features)
            log(f"encoded {stats.clips} clips ({stats.seconds:.0f} s of audio, {frames} frames)")
    return features


def fit_speech_units(
    config: SpeechUnitsConfig, shards: str, out: Path, log: Callable[[str], None] = _stderr
) -> dict[str, Any]:
    """Fit the tokenizer of ``config`` on the audio of ``shards``, write it to ``out`` with
    ``fit.json``, and return that report."""
    started = time.perf_counter()
    tokenizer = SpeechUnitTokenizer.create(config)
    stats = AudioReadStats()
    features = _encode_clips(tokenizer, audio_segments(shards, config.fit.max_clips, stats), stats, log)
    encoded = time.perf_counter()
    if not features:
        raise UserError(
            f"--input {shards} holds no decodable audio segments "
            f"({stats.skipped} samples skipped); speech units are fitted on audio shards"
        )
    frames = torch.cat(features)
    sample = frames
    if len(frames) > config.fit.max_frames:
        order = torch.randperm(len(frames), generator=torch.Generator().manual_seed(config.seed))
        sample = frames[order[: config.fit.max_frames]]
    log(f"fitting k-means (k={config.k}) on {len(sample)} of {len(frames)} frames")
    result = fit_kmeans(sample, config.k, config.seed, config.fit.max_iter, config.fit.tol)
    tokenizer.centroids = result.centroids
    fitted = time.perf_counter()

    units = [tokenizer.units_of_features(f) for f in features]
    deduped = sum(len(dedup_runs(u)) for u in units)
    tokenizer.save(out)
    reloaded = load_media_tokenizer(out)
    if not isinstance(reloaded, SpeechUnitTokenizer) or reloaded.units_of_features(features[0]) != units[0]:
        raise RuntimeError(f"the tokenizer loaded back from {out} gives other units than the fitted one")
    report: dict[str, Any] = {
        "kind": "speech_units",
        "encoder": config.encoder.name,
        "pretrained": config.encoder.pretrained,
        "feature_layer": config.encoder.feature_layer,
        "k": config.k,
        "seed": config.seed,
        "dedup": config.dedup,
        "input": shards,
        "clips": stats.clips,
        "audio_seconds": round(stats.seconds, 3),
        "skipped_samples": stats.skipped,
        "skip_reasons": stats.skip_reasons,
        "frames": len(frames),
        "frames_fitted": len(sample),
        "feature_dim": int(frames.shape[1]),
        "inertia": result.inertia,
        "inertia_per_frame": result.inertia / len(sample),
        "iterations": result.iterations,
        "converged": result.converged,
        "reseeded_clusters": result.reseeded,
        "units_used": len({u for clip in units for u in clip}),
        "units_per_second": len(frames) / stats.seconds,
        "units_per_second_dedup": deduped / stats.seconds,
        "seconds": round(time.perf_counter() - started, 3),
        "seconds_features": round(encoded - started, 3),
        "seconds_kmeans": round(fitted - encoded, 3),
    }
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
