"""`mmpt data build|inspect|stats`: write, look at and count shards (docs/data-format.md).

``--format demo`` draws the demo dataset (mmpretrain.data.demo_data) and needs no input;
the converters of real formats land in a later issue.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from mmpretrain.errors import NotImplementedYetError, UserError


def data_build_command(args: argparse.Namespace) -> int:
    """Handle `mmpt data build` (the arguments cli.build_parser defines); returns 0."""
    if args.format != "demo":
        raise NotImplementedYetError(
            f"`mmpt data build --format {args.format}`: format {args.format!r} is not implemented yet "
            "(planned in issue 'Multimodal shards 2/2'); --format demo works"
        )
    if args.input or args.images_dir:
        raise UserError("--format demo draws its own data; drop --input and --images-dir")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a directory")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise UserError(
            f"--out {out} is not empty; pass --overwrite to replace the shards, index.json and "
            "heldout/ of an earlier build there (other files are kept), or choose another directory"
        )
    from mmpretrain.data.demo_data import build_demo_dataset

    started = time.perf_counter()
    index = build_demo_dataset(out, samples=args.samples, shards=args.shards, seed=args.seed)
    seconds = time.perf_counter() - started
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
    import sys

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
