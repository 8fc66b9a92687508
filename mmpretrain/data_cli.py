"""`mmpt data build`: write a dataset's shards and ``index.json`` (docs/data-format.md).

``--format demo`` draws the demo dataset (mmpretrain.data.demo_data) and needs no input;
the converters of real formats land in a later issue.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

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
