"""Packing benchmark: our best-fit packer against the usual alternatives.

Same seeded data for every method: N documents with lognormal lengths (median 300
tokens, sigma 1.0), documents longer than L split into pieces, packed into L=2048.
Reports ``text_efficiency`` (fraction of token slots holding document tokens) and
``docs_per_s`` (documents packed per second, best of R timed repetitions).

    python scripts/bench_packing.py --quick     # ~10 s
    python scripts/bench_packing.py             # more repetitions, plus 200k documents

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from collections.abc import Callable, Sequence

from mmpretrain.data.packing import best_fit_pack, text_efficiency
from mmpretrain.data.packing_baselines import first_fit_decreasing_pack, next_fit_pack

Packer = Callable[[Sequence[int], int], list[list[int]]]


def document_lengths(n: int, seq_len: int, seed: int = 0) -> list[int]:
    """Piece lengths of ``n`` lognormal documents (median 300, sigma 1), split at L."""
    rng = random.Random(seed)
    lengths = []
    for _ in range(n):
        length = max(1, round(rng.lognormvariate(math.log(300), 1.0)))
        while length > seq_len:
            lengths.append(seq_len)
            length -= seq_len
        lengths.append(length)
    return lengths


def buffered(packer: Packer, buffer: int) -> Packer:
    """The packer applied to consecutive buffers of ``buffer`` items (what streaming does)."""

    def pack(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
        bins: list[list[int]] = []
        for start in range(0, len(lengths), buffer):
            bins += [[start + i for i in b] for b in packer(lengths[start : start + buffer], seq_len)]
        return bins

    return pack


def one_per_row(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
    """Pad-to-L: every document piece in its own row."""
    return [[i] for i in range(len(lengths))]


def dynamic_padding_efficiency(lengths: Sequence[int], batch_size: int = 8) -> float:
    """Pad each batch (stream order) to its longest document."""
    slots = sum(
        max(lengths[s : s + batch_size]) * len(lengths[s : s + batch_size])
        for s in range(0, len(lengths), batch_size)
    )
    return sum(lengths) / slots


def measure(
    packer: Packer, lengths: Sequence[int], seq_len: int, docs: int, repeats: int
) -> dict[str, float]:
    best = math.inf
    packs: list[list[int]] = []
    for _ in range(repeats):
        start = time.perf_counter()
        packs = packer(lengths, seq_len)
        best = min(best, time.perf_counter() - start)
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
    return {
        "text_efficiency": round(text_efficiency(packs, lengths, seq_len), 5),
        "docs_per_s": round(docs / best),
        "rows": len(packs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, 20k documents only")
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--buffer", type=int, default=2048, help="streaming buffer (documents)")
    args = parser.parse_args()
    repeats = 3 if args.quick else 10

    lengths = document_lengths(args.docs, args.seq_len)
    methods: dict[str, Packer] = {
        "best_fit (ours)": best_fit_pack,
        f"best_fit buffered {args.buffer} (ours, streaming)": buffered(best_fit_pack, args.buffer),
        "first_fit_decreasing": first_fit_decreasing_pack,
        "next_fit": next_fit_pack,
        "pad_to_L": one_per_row,
    }
    results = {name: measure(fn, lengths, args.seq_len, args.docs, repeats) for name, fn in methods.items()}
    dynamic = round(dynamic_padding_efficiency(lengths), 5)

    print(f"packing {args.docs} documents ({len(lengths)} pieces) into L={args.seq_len}, best of {repeats}")
    print(f"{'method':<44} {'text_efficiency':>15} {'docs_per_s':>12} {'rows':>7}")
    for name, r in results.items():
        print(f"{name:<44} {r['text_efficiency']:>15.5f} {r['docs_per_s']:>12,} {r['rows']:>7}")
    print(f"{'dynamic padding (batch 8, stream order)':<44} {dynamic:>15.5f} {'-':>12} {'-':>7}")

    large = {}
    if not args.quick:
        big = document_lengths(10 * args.docs, args.seq_len, seed=1)
        large = measure(best_fit_pack, big, args.seq_len, 10 * args.docs, 3)
        print(f"best_fit (ours), {10 * args.docs} documents: {large}")

    ours = results["best_fit (ours)"]
    summary = {
        "bench": "packing",
        "docs": args.docs,
        "seq_len": args.seq_len,
        "text_efficiency": ours["text_efficiency"],
        "docs_per_s": ours["docs_per_s"],
        "streaming_text_efficiency": results[f"best_fit buffered {args.buffer} (ours, streaming)"][
            "text_efficiency"
        ],
        "streaming_docs_per_s": results[f"best_fit buffered {args.buffer} (ours, streaming)"]["docs_per_s"],
        "ffd_text_efficiency": results["first_fit_decreasing"]["text_efficiency"],
        "ffd_docs_per_s": results["first_fit_decreasing"]["docs_per_s"],
        "next_fit_text_efficiency": results["next_fit"]["text_efficiency"],
        "pad_to_L_text_efficiency": results["pad_to_L"]["text_efficiency"],
        "dynamic_padding_text_efficiency": dynamic,
        "machine": f"{platform.machine()} {platform.python_version()}",
    }
    if large:
        summary["docs_per_s_200k"] = large["docs_per_s"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
