"""Packing benchmark: our best-fit packer against the usual alternatives.

Same seeded data for every method: N documents with lognormal lengths (median 300
tokens, sigma 1.0), documents longer than L split into pieces, packed into L=2048.
Reports ``text_efficiency`` (fraction of token slots holding document tokens) and
``docs_per_s`` (documents packed per second, best of R timed repetitions), and
``mixed_efficiency`` for an image-text mixture (40% captions, 40% interleaved with 1-6
images, 20% text; 576 tokens per image plus begin/end markers; at most 8 images per
pack; L=4096; final partial packs included).

    python scripts/bench_packing.py --quick     # ~20 s
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

import torch

from mmpretrain.data.layout import MediaDocument, MediaItem
from mmpretrain.data.media_packing import MediaPacker, PackBudget, pack_media_documents, split_media_document
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


def mixed_documents(n: int, image_tokens: int, seed: int = 0) -> list[MediaDocument]:
    """40% captions (an image + 10-40 text tokens), 40% interleaved (1-6 images + 50-600
    text tokens), 20% text (lognormal, median 300, sigma 1)."""
    rng = random.Random(seed)
    pixels = torch.zeros(1)  # the packer only needs token counts; one shared stand-in tensor
    documents = []
    for i in range(n):
        draw = rng.random()
        if draw < 0.4:
            parts: list = [MediaItem("image", image_tokens, pixels), [1] * rng.randint(10, 40)]
        elif draw < 0.8:
            images = rng.randint(1, 6)
            words = rng.randint(50, 600)
            cuts = sorted(rng.randint(0, words) for _ in range(images))
            parts, previous = [], 0
            for cut in cuts:
                parts += [[1] * (cut - previous), MediaItem("image", image_tokens, pixels)]
                previous = cut
            parts.append([1] * (words - previous))
            parts = [p for p in parts if not isinstance(p, list) or p]
        else:
            parts = [[1] * max(1, round(rng.lognormvariate(math.log(300), 1.0)))]
        documents.append(MediaDocument(f"m{i}", parts))
    return documents


def measure_mixed(documents: list[MediaDocument], seq_len: int, buffer: int) -> dict[str, float]:
    """Efficiency of media-aware best-fit on the whole set and in streaming rounds."""
    budget = PackBudget(max_images=8)
    start = time.perf_counter()
    pieces = [p for d in documents for p in split_media_document(d, seq_len, budget)]
    packs = pack_media_documents(pieces, seq_len, budget)
    elapsed = time.perf_counter() - start
    total = sum(d.length for d in documents)
    streamed = [p for p, _ in MediaPacker(seq_len=seq_len, budget=budget, buffer_docs=buffer).pack(documents)]
    assert all(
        sum(d.count("image") for d in p) <= 8 and sum(d.length for d in p) <= seq_len for p in streamed
    )
    return {
        "mixed_efficiency": round(total / (len(packs) * seq_len), 5),
        "mixed_streaming_efficiency": round(total / (len(streamed) * seq_len), 5),
        "mixed_docs_per_s": round(len(documents) / elapsed),
        "mixed_rows": len(packs),
    }


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
    parser.add_argument("--mixed-seq-len", type=int, default=4096, help="L of the image-text mixture")
    parser.add_argument("--image-tokens", type=int, default=576, help="placeholders per image (64-729)")
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

    mixed = measure_mixed(mixed_documents(args.docs, args.image_tokens), args.mixed_seq_len, args.buffer)
    print(
        f"mixed image-text ({args.docs} docs, {args.image_tokens} tokens per image + 2 markers, "
        f"<= 8 images per pack, L={args.mixed_seq_len}): efficiency {mixed['mixed_efficiency']:.5f} "
        f"(streaming, buffer {args.buffer}: {mixed['mixed_streaming_efficiency']:.5f}), "
        f"{mixed['mixed_docs_per_s']:,} docs/s"
    )

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
        **mixed,
        "image_tokens": args.image_tokens,
        "machine": f"{platform.machine()} {platform.python_version()}",
    }
    if large:
        summary["docs_per_s_200k"] = large["docs_per_s"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
