"""`mmpt data build|inspect|stats`: write, look at and count shards (docs/data-format.md).

``--format demo`` draws the demo dataset (mmpretrain.data.demo_data) and needs no input;
every other format is a parser in mmpretrain.data.build (captions, interleaved, asr,
tts-interleaved, text, conversations).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from mmpretrain.data.build.media_codes import add_codes_to_dataset, media_tokenizer_dirs
from mmpretrain.data.build.options import DEFAULT_MAX_IMAGE_SIDE, BuildOptions
from mmpretrain.errors import UserError


def add_build_arguments(build: argparse.ArgumentParser) -> None:
    """The flags of `mmpt data build` (see mmpretrain.data.build.options.BuildOptions)."""
    add = build.add_argument
    add(
        "--format",
        required=True,
        help="input format: demo, captions, interleaved, asr, tts-interleaved, text, conversations",
    )
    add("--input", help="input file, directory or glob (quote globs)")
    add("--images-dir", help="directory the input's image paths are relative to (default: the input's)")
    add("--audio-dir", help="directory the input's audio paths are relative to (default: the input's)")
    add("--out", required=True, help="output directory for shards and index.json")
    add("--overwrite", action="store_true", help="write into a non-empty --out (replaces an earlier build)")
    add("--source", help="dataset name stored in every sample (default: the detected layout)")
    add("--workers", type=int, default=0, help="processes that read and encode media (default 0: none)")
    add(
        "--max-image-side",
        type=int,
        default=DEFAULT_MAX_IMAGE_SIDE,
        help=f"shrink images so the longer side is at most this (default {DEFAULT_MAX_IMAGE_SIDE})",
    )
    add("--max-audio-seconds", type=float, default=600.0, help="skip longer audio files (default 600)")
    add("--shard-samples", type=int, default=1000, help="samples per shard at most (default 1000)")
    add("--shard-mb", type=float, default=512.0, help="shard size in MB at most (default 512)")
    add(
        "--keep-duplicate-media",
        action="store_true",
        help="keep exact-duplicate images/audio (default: drop)",
    )
    add("--dedup-text", action="store_true", help="drop near-duplicate documents (MinHash; default off)")
    add(
        "--dedup-threshold", type=float, default=0.8, help="Jaccard similarity that counts as duplicate (0.8)"
    )
    add(
        "--max-skip-fraction",
        type=float,
        default=0.9,
        help="stop when more than this fraction of records is bad (after 100; default 0.9)",
    )
    add("--limit", type=int, help="convert only the first N input records")
    add("--layout", help="interleaved: mmc4 or obelics (default: detected from the fields)")
    add("--min-sim", type=float, help="mmc4: drop images whose matched_sim is below this")
    add("--split", action="append", default=[], help="karpathy: keep this split (repeatable; default all)")
    add("--text-field", default="text", help="jsonl/parquet text column (default text)")
    add("--voice", default="en", help="tts-interleaved: espeak-ng voice (default en)")
    add("--tts-rate", type=int, default=160, help="tts-interleaved: words per minute (default 160)")
    add(
        "--tts-ratio", type=float, default=0.5, help="tts-interleaved: fraction of spans spoken (default 0.5)"
    )
    add("--tts-span-words", type=int, default=12, help="tts-interleaved: words per span, about (default 12)")
    add(
        "--tts-mode",
        choices=("replace", "accompany"),
        default="replace",
        help="tts-interleaved: speech replaces the span's text, or is followed by it (default replace)",
    )
    add(
        "--tokenize-media",
        action="append",
        default=[],
        metavar="DIR",
        help="store this media tokenizer's codes in every image/audio segment for early fusion "
        "(a `mmpt tokenizer train --kind vq|speech_units` directory; repeatable, one per modality)",
    )
    add("--samples", type=int, default=600, help="demo: number of samples (default 600)")
    add("--shards", type=int, default=4, help="demo: number of shards (default 4)")
    add("--seed", type=int, default=0, help="random seed (demo data, tts span choice; default 0)")


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(
            f"--out {out} is not empty; pass --overwrite to replace the shards and index.json of an "
            "earlier build there (other files are kept), or choose another directory"
        )


def _build_options(args: argparse.Namespace) -> BuildOptions:
    if not args.input:
        raise UserError(f"--format {args.format} needs --input (a file, directory or glob)")
    positive = {
        "--workers": args.workers + 1,
        "--max-image-side": args.max_image_side,
        "--shard-samples": args.shard_samples,
        "--shard-mb": args.shard_mb,
        "--max-audio-seconds": args.max_audio_seconds,
        "--tts-rate": args.tts_rate,
        "--tts-span-words": args.tts_span_words,
    }
    for flag, value in positive.items():
        if value <= 0:
            raise UserError(f"{flag} must be positive")
    for flag, value in {
        "--dedup-threshold": args.dedup_threshold,
        "--tts-ratio": args.tts_ratio,
        "--max-skip-fraction": args.max_skip_fraction,
    }.items():
        if not 0.0 <= value <= 1.0:
            raise UserError(f"{flag} must be between 0 and 1, got {value}")
    return BuildOptions(
        input=Path(args.input),
        out=Path(args.out),
        images_dir=Path(args.images_dir) if args.images_dir else None,
        audio_dir=Path(args.audio_dir) if args.audio_dir else None,
        source=args.source,
        workers=args.workers,
        max_image_side=args.max_image_side,
        max_audio_seconds=args.max_audio_seconds,
        shard_samples=args.shard_samples,
        shard_bytes=int(args.shard_mb * 1024 * 1024),
        dedup_media=not args.keep_duplicate_media,
        dedup_text=args.dedup_text,
        dedup_threshold=args.dedup_threshold,
        max_skip_fraction=args.max_skip_fraction,
        limit=args.limit,
        seed=args.seed,
        layout=args.layout,
        min_sim=args.min_sim,
        splits=tuple(args.split),
        text_field=args.text_field,
        voice=args.voice,
        tts_rate=args.tts_rate,
        tts_ratio=args.tts_ratio,
        tts_span_words=args.tts_span_words,
        tts_mode=args.tts_mode,
        tokenize_media=tuple(sorted(media_tokenizer_dirs(args.tokenize_media).items())),
    )


def _dropped(build: dict[str, Any]) -> str:
    dropped = build.get("media_dropped_from_kept_documents", {})
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in dropped.items() if v) or "none"


def _print_build_summary(index: dict[str, Any], out: Path) -> None:
    build = index["build"]
    reasons = ", ".join(f"{k} {v}" for k, v in build["errors_by_reason"].items()) or "none"
    dups = build["duplicates_removed"]
    print(
        f"built {index['samples']} samples in {len(index['shards'])} shards in {out} from "
        f"{build['records']} records ({build['seconds']:.1f} s, {build['records_per_s']:.0f} records/s)\n"
        f"  {index['images']} images, {index['audio']} audio clips ({index['audio_seconds']:.1f} s), "
        f"~{index['text_tokens_est']} text tokens, {index['bytes'] / 1e6:.1f} MB\n"
        f"  skipped {build['skipped']} ({reasons})\n"
        f"  duplicates removed: {dups['media_samples']} samples and {dups['media_items']} items with "
        f"duplicate media, {dups['text_documents']} near-duplicate documents\n"
        f"  media left out of kept documents: {_dropped(build)}\n"
        f"  index: {out / 'index.json'}"
    )
    for example in build["examples"][:5]:
        print(f"  skipped: {example}")


def data_build_command(args: argparse.Namespace) -> int:
    """Handle `mmpt data build` (the arguments of :func:`add_build_arguments`); returns 0."""
    out = Path(args.out)
    if args.format != "demo":
        from mmpretrain.data.build.formats import get_format
        from mmpretrain.data.build.runner import build_dataset

        get_format(args.format)  # unknown formats fail before anything is touched
        options = _build_options(args)
        _check_out(out, args.overwrite)
        _print_build_summary(build_dataset(args.format, options), out)
        return 0
    if args.input or args.images_dir:
        raise UserError("--format demo draws its own data; drop --input and --images-dir")
    _check_out(out, args.overwrite)
    from mmpretrain.data.demo_data import build_demo_dataset

    started = time.perf_counter()
    tokenizers = media_tokenizer_dirs(args.tokenize_media)  # checked before drawing anything
    index = build_demo_dataset(out, samples=args.samples, shards=args.shards, seed=args.seed)
    seconds = time.perf_counter() - started
    coded = add_codes_to_dataset(out, tokenizers)["segments"] if tokenizers else {}
    kinds = ", ".join(f"{kind} {n}" for kind, n in index["kinds"].items())
    heldout = index["heldout"]
    print(
        f"built {index['samples']} demo samples in {len(index['shards'])} shards in {out} "
        f"({seconds:.1f} s, seed {args.seed})\n"
        f"  kinds: {kinds}\n"
        f"  {index['images']} images, {index['audio']} audio clips ({index['audio_seconds']:.1f} s), "
        f"~{index['text_tokens_est']} text tokens, {index['bytes'] / 1e6:.1f} MB\n"
        f"  held-out split: {heldout['samples']} samples in {out / heldout['path']} "
        "(no training scene in it)\n"
        f"  index: {out / 'index.json'}"
    )
    if coded:
        stored = ", ".join(f"{kind} {n} ({tokenizers[kind]})" for kind, n in coded.items())
        print(
            f"  media codes stored (early fusion): {stored}, {time.perf_counter() - started - seconds:.1f} s"
        )
    return 0


def _describe_segment(segment: Any) -> str:
    if segment.kind == "text":
        text = " ".join((segment.text or "").split())
        return f"text  {text[:90]!r}{'...' if len(text) > 90 else ''}"
    if segment.kind == "image":
        return f"image {segment.image.width}x{segment.image.height} {segment.member or ''}".rstrip()
    seconds = len(segment.audio) / segment.sample_rate if segment.sample_rate else 0.0
    transcript = f" transcript {segment.text!r}" if segment.text else ""
    return f"audio {seconds:.2f} s @ {segment.sample_rate} Hz {segment.member or ''}{transcript}"


def data_inspect_command(args: argparse.Namespace) -> int:
    """Handle `mmpt data inspect`: print the first ``--limit`` samples readably."""
    from mmpretrain.data.decoders import DecodeError, decode_sample
    from mmpretrain.data.error_budget import SkipEvent
    from mmpretrain.data.reader import expand_shards
    from mmpretrain.data.shard_stream import shard_outcomes

    shown = 0
    for shard in expand_shards(args.shards):
        print(f"== {shard}")
        for _, outcome in shard_outcomes(shard):
            if shown >= args.limit:
                return 0
            shown += 1
            if isinstance(outcome, SkipEvent):
                print(f"  {outcome.key or '(shard)'}: SKIPPED ({outcome.reason}) {outcome.detail}")
                continue
            try:
                sample = decode_sample(outcome)
            except DecodeError as exc:
                print(f"  {outcome.key}: SKIPPED ({exc.reason}) {exc}")
                continue
            meta = f" meta {sample.meta}" if sample.meta else ""
            print(f"  {sample.key} (source {sample.source!r}, {len(sample.segments)} segments){meta}")
            for segment in sample.segments:
                print(f"    {_describe_segment(segment)}")
    return 0


def data_stats_command(args: argparse.Namespace) -> int:
    """Handle `mmpt data stats`: counts over every shard; with --json stdout holds only JSON."""
    import json

    from mmpretrain.data.reader import reader_stats

    count_tokens = None
    if args.tokenizer:
        from mmpretrain.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
        count_tokens = lambda text: len(tokenizer.encode(text))  # noqa: E731

    def progress(done: int, total: int, shard: str) -> None:
        print(f"[{done + 1}/{total}] {shard}", file=sys.stderr, flush=True)

    stats = reader_stats(args.shards, progress=progress, count_tokens=count_tokens)
    if args.json:
        print(json.dumps(stats))
        return 0
    reasons = ", ".join(f"{k} {v}" for k, v in stats["errors_by_reason"].items()) or "none"
    tokens = "" if stats["text_tokens_exact"] else " (estimated: characters / 4)"
    print(
        f"shards        {stats['shards']}\n"
        f"samples       {stats['samples']}\n"
        f"skipped       {stats['skipped']} ({reasons})\n"
        f"images        {stats['images']}\n"
        f"audio         {stats['audio_clips']} clips, {stats['audio_seconds']:.1f} s\n"
        f"text tokens   {stats['text_tokens']}{tokens}"
    )
    for example in stats["examples"][:5]:
        print(f"  skipped: {example}")
    return 0
