"""Training-throughput benchmark: packed batches against padding collators.

One seeded document stream (lognormal lengths, median 300 tokens, sigma 1.0; uniform
random token ids) feeds three batchings of 8 rows with L=2048:

- packed: our ``TextPacker`` (best-fit decreasing) + ``build_text_batch``, ``[8, L]``;
- dynamic padding: 8 documents per batch in stream order, padded to the longest of the
  batch (``dynamic_padding_batch``, documents longer than L cut to L);
- pad-to-L: 8 documents per batch, each padded to L (``pad_to_length_batch``).

Each method trains its own copy of the same small Llama (same initial weights, fused
AdamW, grad clipping) with the same step code; attention is document-isolated in all
three (``packed_logits`` passes ``batch.attention_mask("additive")``). After warm-up
steps, the methods run the same number of timed steps (chosen to fit a wall-clock
budget), interleaved round-robin in a rotating order. Reports non-pad tokens/s per
method, the packed speedup over dynamic padding (target >= 2.0) and over pad-to-L, and
the model FLOP utilisation (``mfu``) of packed training against this machine's measured
fp32 ``torch.mm`` peak. Batch construction is not timed (bench_packing.py measures it).

    python scripts/bench_throughput.py --quick     # ~2-3 minutes
    python scripts/bench_throughput.py             # longer budget

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice

import torch
from torch import nn

from mmpretrain.data.packing import TextPacker, build_text_batch
from mmpretrain.data.packing_baselines import dynamic_padding_batch, pad_to_length_batch
from mmpretrain.data.synthetic import lognormal_documents
from mmpretrain.data.types import PackedBatch
from mmpretrain.model.llms import LlamaLMConfig, build_causal_lm
from mmpretrain.model.packed import packed_logits, token_loss_sum
from mmpretrain.train.config import OptimConfig
from mmpretrain.train.optim import build_optimizer

PAD_ID = 0
GRAD_CLIP = 1.0


def packed(n: int, rows: int, seq_len: int, vocab: int, seed: int) -> list[PackedBatch]:
    """``n`` packed ``[rows, seq_len]`` batches (best-fit packs of the document stream)."""
    packs = TextPacker(seq_len, seed=seed).pack(lognormal_documents(vocab, seed))
    return [build_text_batch([next(packs)[0] for _ in range(rows)], seq_len, PAD_ID) for _ in range(n)]


def dynamic(n: int, rows: int, seq_len: int, vocab: int, seed: int) -> list[PackedBatch]:
    """``n`` batches of ``rows`` documents in stream order, padded to their longest."""
    docs = lognormal_documents(vocab, seed)
    return [dynamic_padding_batch(list(islice(docs, rows)), PAD_ID, seq_len) for _ in range(n)]


def pad_to_l(n: int, rows: int, seq_len: int, vocab: int, seed: int) -> list[PackedBatch]:
    """``n`` batches of ``rows`` documents in stream order, each padded to ``seq_len``."""
    docs = lognormal_documents(vocab, seed)
    return [pad_to_length_batch(list(islice(docs, rows)), seq_len, PAD_ID) for _ in range(n)]


def non_pad_tokens(batch: PackedBatch) -> int:
    """Document tokens in ``batch`` (the throughput numerator)."""
    return int((batch.doc_ids >= 0).sum())


@dataclass
class Method:
    """One batching method: its batches, its own model copy and optimizer, its timings."""

    name: str
    batches: list[PackedBatch]
    model: nn.Module
    optimizer: torch.optim.Optimizer
    seconds: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)

    def step(self, index: int) -> float:
        """Train on batch ``index``; return the wall-clock seconds it took."""
        batch = self.batches[index]
        start = time.perf_counter()
        train_step(self.model, self.optimizer, batch)
        return time.perf_counter() - start

    def record(self, index: int, seconds: float) -> None:
        """Count a timed step."""
        self.seconds.append(seconds)
        self.tokens.append(non_pad_tokens(self.batches[index]))
        self.slots.append(self.batches[index].input_ids.numel())

    @property
    def tokens_per_s(self) -> float:
        """Non-pad tokens per second over the timed steps."""
        return sum(self.tokens) / sum(self.seconds)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: PackedBatch) -> float:
    """The loop's step for one micro-batch: packed forward (additive document mask), summed
    token loss over label tokens, clip, AdamW step (same for every method)."""
    logits = packed_logits(model, batch)
    loss_sum, label_tokens = token_loss_sum(logits, batch.labels)
    (loss_sum / max(label_tokens, 1)).backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]  # as loop.py
    torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum.item() / max(label_tokens, 1)


def matmul_peak(size: int, repeats: int, warmup_s: float = 1.0) -> float:
    """Median FLOP/s of ``repeats`` fp32 ``torch.mm`` of two ``size x size`` matrices,
    after ``warmup_s`` seconds of untimed ones (the first few run well below peak)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    start = time.perf_counter()
    while time.perf_counter() - start < warmup_s:
        torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def flops_per_token(model: nn.Module, llm: LlamaLMConfig, seq_len: int) -> int:
    """Model FLOPs per trained token (forward + backward), PaLM-style:
    ``6 * N + 12 * n_layers * hidden * seq_len``, where N counts every parameter except
    the input embedding table (a lookup, no matmul; the untied LM head is counted) and
    the second term is the attention score and value matmuls over the full ``seq_len``
    (what the dense masked attention computes)."""
    embedding = model.get_input_embeddings().weight  # type: ignore[operator]
    n_params = sum(p.numel() for p in model.parameters() if p is not embedding)
    return 6 * n_params + 12 * llm.num_layers * llm.hidden_size * seq_len


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short time budget")
    parser.add_argument("--budget-s", type=float, default=None, help="seconds for the timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per method")
    parser.add_argument("--max-steps", type=int, default=None, help="timed steps per method, at most")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--rows", type=int, default=8, help="rows per batch")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: cores)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    budget = args.budget_s or (90.0 if args.quick else 480.0)
    max_steps = args.max_steps or (20 if args.quick else 100)
    torch.set_num_threads(args.threads)

    llm = LlamaLMConfig(
        name="llama",
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3 // 64 * 64,
        num_layers=args.layers,
        num_heads=max(args.hidden // 64, 1),
        max_position_embeddings=args.seq_len,
    )
    torch.manual_seed(args.seed)
    base = build_causal_lm(llm).train()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    makers: dict[str, Callable[[int, int, int, int, int], list[PackedBatch]]] = {
        "packed (ours)": packed,
        "dynamic padding": dynamic,
        "pad to L": pad_to_l,
    }
    n_batches = args.warmup + max_steps
    methods = []
    for name, make in makers.items():
        model = build_causal_lm(llm).train()
        model.load_state_dict(state)
        batches = make(n_batches, args.rows, args.seq_len, args.vocab, args.seed)
        methods.append(Method(name, batches, model, build_optimizer(model, OptimConfig())))

    warmup_s = {m.name: 0.0 for m in methods}
    for index in range(args.warmup):
        for m in methods:
            warmup_s[m.name] = m.step(index)
    round_s = sum(warmup_s.values())
    steps = max(2, min(max_steps, int(budget / round_s)))
    for i in range(steps):
        index = args.warmup + i
        for k in range(len(methods)):
            m = methods[(i + k) % len(methods)]  # rotate who goes first
            m.record(index, m.step(index))

    peak = matmul_peak(2048, 10 if args.quick else 25)  # after training: the machine is warm
    fpt = flops_per_token(base, llm, args.seq_len)
    by_name = {m.name: m for m in methods}
    ours = by_name["packed (ours)"]
    achieved = fpt * ours.tokens_per_s
    mfu = achieved / peak
    speedup = ours.tokens_per_s / by_name["dynamic padding"].tokens_per_s
    speedup_l = ours.tokens_per_s / by_name["pad to L"].tokens_per_s
    n_params = sum(p.numel() for p in base.parameters())

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, ", end="")
    print(f"torch.set_num_threads({args.threads}) -> {torch.get_num_threads()} threads")
    print(
        f"model: llama hidden {args.hidden}, {args.layers} layers, {llm.num_heads} heads, vocab "
        f"{args.vocab}, {n_params / 1e6:.2f}M params, fp32; {args.rows} rows, L={args.seq_len}"
    )
    print(f"{args.warmup} warm-up step(s) per method, then {steps} timed steps each (budget {budget:.0f} s)")
    print(
        f"{'method':<18} {'tokens/s':>10} {'ms/step':>9} {'tokens/step':>12} {'efficiency':>11} "
        f"{'mean width':>11} {'speedup':>8}"
    )
    for m in methods:
        width = sum(m.slots) / (args.rows * len(m.slots))
        print(
            f"{m.name:<18} {m.tokens_per_s:>10,.0f} {1000 * statistics.fmean(m.seconds):>9.0f} "
            f"{statistics.fmean(m.tokens):>12,.0f} {sum(m.tokens) / sum(m.slots):>11.3f} "
            f"{width:>11.0f} {ours.tokens_per_s / m.tokens_per_s:>8.2f}"
        )
    print(f"matmul peak (median fp32 torch.mm 2048x2048): {peak / 1e9:.1f} GFLOP/s")
    print(
        f"packed training: {fpt / 1e6:.2f} MFLOP/token x {ours.tokens_per_s:,.0f} tokens/s = "
        f"{achieved / 1e9:.1f} GFLOP/s, mfu {mfu:.3f}"
    )

    summary = {
        "bench": "throughput",
        "packed_speedup": round(speedup, 3),
        "packed_speedup_vs_pad_to_L": round(speedup_l, 3),
        "packed_tokens_per_s": round(ours.tokens_per_s, 1),
        "dynamic_tokens_per_s": round(by_name["dynamic padding"].tokens_per_s, 1),
        "pad_to_L_tokens_per_s": round(by_name["pad to L"].tokens_per_s, 1),
        "mfu": round(mfu, 4),
        "model_flops_per_s": round(achieved),
        "matmul_peak_flops_per_s": round(peak),
        "flops_per_token": fpt,
        "steps": steps,
        "warmup": args.warmup,
        "packed_efficiency": round(sum(ours.tokens) / sum(ours.slots), 4),
        "hidden": args.hidden,
        "layers": args.layers,
        "vocab": args.vocab,
        "seq_len": args.seq_len,
        "rows": args.rows,
        "params": n_params,
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
