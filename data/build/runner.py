"""Run one build: parse -> materialize in worker processes -> deduplicate -> shards + index.

The output does not depend on the number of workers: results come back in input order and
every decision (duplicates, shard boundaries) is taken in the main process in that order.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mmpretrain.data.shard_io import ShardWriter
from mmpretrain.data.shard_schema import SCHEMA_VERSION
from mmpretrain.data.skips import SkipCounter
from mmpretrain.data.types import Sample
from mmpretrain.errors import DataFormatError

from .formats import get_format
from .materialize import Materialized, audio_seconds, materialize
from .options import BuildOptions
from .records import RecordSkip, SourceRecord
from .text_dedup import NearDuplicateFilter

INDEX_FORMAT_VERSION = 1

DROPPED_MEDIA_KEYS = ("missing_images", "low_sim_images")
"""Sample ``meta`` counters of media a parser left out of a kept document (an interleaved
document keeps its text when some of its images are missing); the index sums them."""


def _work(item: SourceRecord | RecordSkip, options: BuildOptions) -> Materialized | RecordSkip:
    return item if isinstance(item, RecordSkip) else materialize(item, options)


def _limited(
    items: Iterable[SourceRecord | RecordSkip], limit: int | None
) -> Iterator[SourceRecord | RecordSkip]:
    for n, item in enumerate(items):
        if limit is not None and n >= limit:
            return
        yield item


@dataclass
class _ShardTotals:
    samples: int = 0
    images: int = 0
    audio: int = 0
    audio_seconds: float = 0.0
    chars: int = 0


@dataclass
class _Dedup:
    """Exact media and near-duplicate text removal, in input order."""

    options: BuildOptions
    media: set[bytes] = field(default_factory=set)
    text: NearDuplicateFilter | None = None
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.options.dedup_text:
            self.text = NearDuplicateFilter(self.options.dedup_threshold, seed=self.options.seed)

    def filter(self, built: Materialized, where: str) -> Sample | RecordSkip:
        sample = built.sample
        if self.options.dedup_media and built.media_hashes:
            digests = iter(built.media_hashes)
            kept, dropped = [], 0
            for segment in sample.segments:
                if segment.is_media:
                    digest = bytes.fromhex(next(digests))[:16]
                    # Synthesized speech repeats whenever the text does ("[Exeunt.]"): it is
                    # not a crawled duplicate, and dropping it would drop the span's words.
                    synthesized = "tts" in segment.meta
                    if digest in self.media and not synthesized:
                        dropped += 1
                        continue
                    self.media.add(digest)
                kept.append(segment)
            if dropped:
                if dropped == len(built.media_hashes):
                    self.counts["media_samples"] += 1
                    return RecordSkip(
                        "duplicate_media", where, "every media item already is in an earlier sample"
                    )
                self.counts["media_items"] += dropped
                sample = Sample(sample.key, sample.source, kept, sample.meta)
        if self.text is not None:
            text = "\n".join(s.text for s in sample.segments if s.text)
            earlier = self.text.check_and_add(text)
            if earlier is not None:
                self.counts["text_documents"] += 1
                return RecordSkip(
                    "near_duplicate_text", where, f"near-duplicate of kept document {earlier} (MinHash)"
                )
        return sample


def _progress(total: int | None, enabled: bool) -> Any:
    """Records read so far on stderr: a bar on a terminal, else a line every few seconds."""
    from mmpretrain.terminal import StderrProgress

    return StderrProgress("data build", total, "records") if enabled else _NoProgress()


class _NoProgress:
    """Progress that shows nothing (`build_dataset(progress=False)`)."""

    def advance(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _results(
    items: Iterator[SourceRecord | RecordSkip], options: BuildOptions
) -> Iterator[Materialized | RecordSkip]:
    work = functools.partial(_work, options=options)
    if options.workers <= 0:
        yield from map(work, items)
        return
    context = multiprocessing.get_context("forkserver")
    # The fork server imports the heavy modules (torch comes with mmpretrain.data) once;
    # every worker forks from it instead of importing them again.
    context.set_forkserver_preload([materialize.__module__])
    with context.Pool(options.workers) as pool:
        yield from pool.imap(work, items, chunksize=8)


def clear_previous_build(out: Path) -> None:
    """Remove the shards and index of an earlier build in ``out`` (other files stay)."""
    for old in [*out.glob("shard-*.tar"), *out.glob("shard-*.tar.tmp"), out / "index.json"]:
        if old.is_file():
            old.unlink()


def build_dataset(fmt: str, options: BuildOptions, progress: bool = True) -> dict[str, Any]:
    """Build ``options.out`` from ``options.input`` in format ``fmt``; return ``index.json``'s content.

    Bad records (missing media, malformed rows) are skipped and counted by reason with
    file and line; the build stops with :class:`DataFormatError` once more than
    ``options.max_skip_fraction`` of the records (after the first 100) were bad.
    """
    spec = get_format(fmt)
    started = time.perf_counter()
    options.out.mkdir(parents=True, exist_ok=True)
    clear_previous_build(options.out)
    skips = SkipCounter(
        max_skips=None, max_fraction=options.max_skip_fraction, name=f"--input {options.input}"
    )
    dedup = _Dedup(options)
    keys: set[str] = set()
    dropped: Counter[str] = Counter()  # media a parser left out of kept documents, by reason
    totals: list[_ShardTotals] = []
    records = 0
    bar = _progress(options.limit, progress)
    with ShardWriter(
        options.out, prefix="shard", max_samples=options.shard_samples, max_bytes=options.shard_bytes
    ) as writer:
        for result in _results(_limited(spec.parse(options), options.limit), options):
            records += 1
            bar.advance(1)
            where = result.where
            outcome = result if isinstance(result, RecordSkip) else dedup.filter(result, where)
            if isinstance(outcome, Sample) and outcome.key in keys:
                outcome = RecordSkip(
                    "duplicate_key", where, f"sample key {outcome.key!r} was already written"
                )
            if isinstance(outcome, RecordSkip):
                skips.skip(outcome.reason, outcome.where, outcome.detail)
                continue
            try:
                writer.write(outcome)
            except DataFormatError as exc:
                skips.skip("unwritable_sample", where, str(exc))
                continue
            keys.add(outcome.key)
            skips.ok()
            for reason in DROPPED_MEDIA_KEYS:
                dropped[reason] += int(outcome.meta.get(reason, 0))
            shard = len(writer.shards)  # index of the shard the sample went into
            while len(totals) <= shard:
                totals.append(_ShardTotals())
            t = totals[shard]
            t.samples += 1
            t.images += sum(s.kind == "image" for s in outcome.segments)
            t.audio += sum(s.kind == "audio" for s in outcome.segments)
            t.audio_seconds += audio_seconds(outcome)
            t.chars += sum(len(s.text or "") for s in outcome.segments if s.kind == "text")
    bar.close()
    seconds = time.perf_counter() - started
    index = _index(fmt, options, writer, totals, skips, dedup, records, seconds)
    index["build"]["media_dropped_from_kept_documents"] = {k: dropped[k] for k in DROPPED_MEDIA_KEYS}
    (options.out / "index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return index


def _index(
    fmt: str,
    options: BuildOptions,
    writer: ShardWriter,
    totals: list[_ShardTotals],
    skips: SkipCounter,
    dedup: _Dedup,
    records: int,
    seconds: float,
) -> dict[str, Any]:
    from mmpretrain import __version__

    entries = [
        {
            "path": path.name,
            "samples": n,
            "text_tokens_est": round(t.chars / 4),  # ~4 characters per token
            "images": t.images,
            "audio": t.audio,
            "audio_seconds": round(t.audio_seconds, 3),
            "bytes": path.stat().st_size,
        }
        for path, n, t in zip(writer.shards, writer.samples_per_shard, totals, strict=True)
    ]
    total = {
        k: sum(e[k] for e in entries) for k in ("samples", "images", "audio", "text_tokens_est", "bytes")
    }
    stats = skips.as_dict()
    return {
        "format_version": INDEX_FORMAT_VERSION,
        "schema_version": SCHEMA_VERSION,
        "shards": entries,
        **total,
        "audio_seconds": round(sum(e["audio_seconds"] for e in entries), 3),
        "build": {
            "format": fmt,
            "input": str(options.input),
            "records": records,
            "kept": total["samples"],
            "skipped": stats["skipped"],
            "errors_by_reason": stats["errors_by_reason"],
            "examples": list(skips.examples),
            "duplicates_removed": {
                k: dedup.counts.get(k, 0) for k in ("media_samples", "media_items", "text_documents")
            },
            "options": options.as_json(),
            "seconds": round(seconds, 2),
            "records_per_s": round(records / max(seconds, 1e-9), 1),
            "mmpretrain_version": __version__,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }
