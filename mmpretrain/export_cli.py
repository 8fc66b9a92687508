"""`mmpt export CHECKPOINT --to hf|safetensors --out DIR`: the command around
:func:`mmpretrain.export.export_checkpoint` (progress on stderr, the result on stdout)."""

from __future__ import annotations

import argparse

DTYPE_CHOICES = ("float32", "bfloat16", "float16")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `mmpt export`."""
    parser.add_argument("checkpoint", help="run directory, checkpoint directory or saved-model directory")
    parser.add_argument("--to", choices=["hf", "safetensors"], required=True, help="target format")
    parser.add_argument("--out", required=True, help="output directory (must be new or empty)")
    parser.add_argument(
        "--dtype", choices=DTYPE_CHOICES, help="floating-point dtype of the weights (default: as trained)"
    )
    parser.add_argument(
        "--max-shard-size", default="5GB", help="largest safetensors file before sharding (default 5GB)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")


def export_command(args: argparse.Namespace) -> int:
    """Run the export; prints what was written (class, parameters, dtype, size)."""
    from mmpretrain.export import export_checkpoint

    result = export_checkpoint(
        args.checkpoint,
        args.to,
        args.out,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
    )
    print(result.message())
    return 0
