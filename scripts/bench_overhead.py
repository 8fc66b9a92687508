"""Overhead benchmark: our training step against a bare hand-written torch loop.

Both sides get identical inputs: the same packed batches (our ``TextPacker`` over seeded
lognormal documents, median 300 tokens, sigma 1.0), the same additive block-causal mask,
the same initial weights, the same fused AdamW with the same parameter groups, the same
gradient clipping and dtype. "Ours" is exactly what ``train()`` in
mmpretrain/train/loop.py does per optimizer step (see :class:`OurStep`); "bare" is the
minimum a hand-written loop needs (its masks and label counts are built once, before
timing). Steps run interleaved in pairs (ours, bare, bare, ours, ours, bare, ...: each
pair alternates which goes first) after warm-up steps, and the medians are compared:
``overhead_ratio = ours_ms / bare_ms`` (target <= 1.05); the median of the per-pair
ratios is reported too (less sensitive to a shared machine's slow spells). Both
models see the same batches in the same order, so their losses must agree: the script
checks that too.

    python scripts/bench_overhead.py --quick     # ~40 s: 3 warm-up steps + 20 pairs
    python scripts/bench_overhead.py             # ~2 minutes: 5 warm-up steps + 60 pairs

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmpretrain.data.packing import TextPacker, build_text_batch
from mmpretrain.data.synthetic import lognormal_documents
from mmpretrain.data.text_pipeline import TextStreamState
from mmpretrain.data.types import PackedBatch
from mmpretrain.errors import UserError
from mmpretrain.model.llms import LlamaLMConfig, build_causal_lm
from mmpretrain.model.multimodal import MultimodalLM
from mmpretrain.model.packed import token_loss_sum
from mmpretrain.train.config import OptimConfig, TrainConfig
from mmpretrain.train.metrics import MetricsLogger
from mmpretrain.train.optim import build_optimizer
from mmpretrain.train.schedule import lr_at
from mmpretrain.train.signals import GracefulStop

PAD_ID = 0
MicroBatch = tuple[PackedBatch, TextStreamState]


def packed_batches(n: int, batch_size: int, seq_len: int, vocab: int, seed: int) -> list[PackedBatch]:
    """``n`` packed ``[batch_size, seq_len]`` batches, as the text pipeline makes them."""
    packer = TextPacker(seq_len, seed=seed)
    packs = packer.pack(lognormal_documents(vocab, seed))
    return [build_text_batch([next(packs)[0] for _ in range(batch_size)], seq_len, PAD_ID) for _ in range(n)]


class OurStep:
    """One optimizer step of ``train()`` in mmpretrain/train/loop.py.

    This MIRRORS THE LOOP BODY OF loop.py (lines from ``lr = lr_at(...)`` to the
    save-cadence check), calling the same package functions in the same order; keep the
    two in sync when loop.py changes. Left out: the data pipeline (``next(batches)`` reads
    pre-built batches here, as the bare loop does) and checkpoint writing (the cadence is
    checked, but ``save_every`` is beyond the benchmark's length).
    """

    def __init__(
        self, model: nn.Module, train_cfg: TrainConfig, optim_cfg: OptimConfig, run_dir: Path
    ) -> None:
        self.cfg_train, self.cfg_optim = train_cfg, optim_cfg
        self.model = model
        self.optimizer = build_optimizer(model, optim_cfg)
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.forward_model = torch.compile(model) if train_cfg.compile else model
        self.autocast: Any = (
            torch.autocast(device_type="cpu", dtype=torch.bfloat16)
            if train_cfg.precision == "bf16"
            else contextlib.nullcontext()
        )
        self.step, self.tokens, self.nan_skips, self.data_state = 0, 0, 0, TextStreamState()
        self.end_step = train_cfg.max_steps
        self.window_start, self.window_tokens = time.perf_counter(), 0
        self.run_tokens = 0
        self.last_loss: float | None = None
        self.stop = GracefulStop()
        self.log = MetricsLogger(run_dir, train_cfg.max_steps, 0)

    def close(self) -> None:
        """Close the metrics files."""
        self.log.close()

    def __call__(self, batches: Iterator[MicroBatch]) -> float:
        """Run one optimizer step on the next ``grad_accum`` micro-batches; return the loss."""
        cfg_train, cfg_optim, optimizer, log, stop = (
            self.cfg_train,
            self.cfg_optim,
            self.optimizer,
            self.log,
            self.stop,
        )
        assert self.step < self.end_step and not stop.requested  # the `while` condition
        # ---- from here to the end: loop.py's loop body, line for line ----
        lr = lr_at(self.step, cfg_optim, cfg_train.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro_batches = [next(batches) for _ in range(cfg_train.grad_accum)]
        label_tokens = max(sum(b.num_label_tokens() for b, _ in micro_batches), 1)
        loss_sum_total = 0.0
        for batch, _ in micro_batches:
            with self.autocast:
                logits = self.forward_model(batch)
            loss_sum, _ = token_loss_sum(logits, batch.labels)
            (loss_sum / label_tokens).backward()
            loss_sum_total += loss_sum.item()
        loss = loss_sum_total / label_tokens
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg_train.grad_clip or math.inf).item()
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.nan_skips += 1
            keys = [k for b, _ in micro_batches for row in b.keys for k in row][:6]
            where = f"non-finite loss {loss} (grad norm {grad_norm}) at step {self.step + 1}, samples {keys}"
            if cfg_train.nan_policy == "raise":
                raise UserError(f"{where}; set train.nan_policy=skip to skip such steps, or lower optim.lr")
            if self.nan_skips > cfg_train.max_nan_skips:
                raise UserError(
                    f"{where}: {self.nan_skips} non-finite steps skipped (limit train.max_nan_skips)"
                )
            log.message(f"warning: {where}: step skipped ({self.nan_skips}/{cfg_train.max_nan_skips})")
        else:
            optimizer.step()
            self.last_loss = loss
        optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.data_state = micro_batches[-1][1]
        step_tokens = sum(int((b.doc_ids >= 0).sum()) for b, _ in micro_batches)
        self.tokens += step_tokens
        self.window_tokens += step_tokens
        self.run_tokens += step_tokens
        if self.step % cfg_train.log_every == 0 or self.step == self.end_step:
            elapsed = time.perf_counter() - self.window_start
            slots = sum(b.input_ids.numel() for b, _ in micro_batches)
            log.log(
                {
                    "step": self.step,
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens": self.tokens,
                    "tokens_per_s": self.window_tokens / max(elapsed, 1e-9),
                    "packing_efficiency": step_tokens / slots,
                    "nan_skips": self.nan_skips,
                }
            )
            self.window_start, self.window_tokens = time.perf_counter(), 0
        else:
            log.advance(self.step)
        if self.step % cfg_train.save_every == 0 or self.step == self.end_step or stop.requested:
            raise RuntimeError("the benchmark ran into a checkpoint step; raise save_every")
        return loss


@dataclass(frozen=True)
class BareInputs:
    """What the bare loop needs for one optimizer step, prepared before timing."""

    micro_batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    """(input_ids, additive mask, position_ids, labels) per micro-batch"""
    label_tokens: int


class BareStep:
    """A hand-written training step: plain forward, cross-entropy, clip, fused AdamW."""

    def __init__(self, model: nn.Module, optim_cfg: OptimConfig, grad_clip: float, precision: str) -> None:
        self.model = model
        embedding = model.get_input_embeddings().weight  # type: ignore[operator]
        matrices = [p for p in model.parameters() if p.ndim >= 2 and p is not embedding]
        others = [p for p in model.parameters() if p.ndim < 2 or p is embedding]
        self.params = matrices + others
        self.optimizer = torch.optim.AdamW(
            [
                {"params": matrices, "weight_decay": optim_cfg.weight_decay},
                {"params": others, "weight_decay": 0.0},
            ],
            lr=optim_cfg.lr,
            betas=optim_cfg.betas,
            eps=optim_cfg.eps,
            fused=True,
        )
        self.grad_clip = grad_clip
        self.bf16 = precision == "bf16"

    def __call__(self, inputs: BareInputs) -> torch.Tensor:
        """Run one optimizer step; return the (detached) loss tensor."""
        total = torch.zeros(())
        for input_ids, mask, position_ids, labels in inputs.micro_batches:
            with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.model(
                    input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False
                ).logits
            loss = (
                F.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                    labels[:, 1:].reshape(-1),
                    reduction="sum",
                )
                / inputs.label_tokens
            )
            loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total


def bare_inputs(micro_batches: list[PackedBatch]) -> BareInputs:
    """The bare loop's inputs: the same tensors and the same additive mask as ours."""
    return BareInputs(
        [
            (b.input_ids, b.attention_mask("additive", dtype=torch.float32), b.position_ids, b.labels)
            for b in micro_batches
        ],
        sum(b.num_label_tokens() for b in micro_batches),
    )


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    """Seconds ``fn(*args)`` took, and its result."""
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 warm-up steps and 20 interleaved pairs")
    parser.add_argument("--pairs", type=int, default=None, help="interleaved (ours, bare) pairs")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps of each, not timed")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: cores)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pairs = args.pairs or (20 if args.quick else 60)
    warmup = args.warmup if args.warmup is not None else (3 if args.quick else 5)
    torch.set_num_threads(args.threads)

    llm = LlamaLMConfig(
        name="llama",
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3 // 64 * 64,
        num_layers=args.layers,
        num_heads=args.hidden // 64,
        max_position_embeddings=args.seq_len,
    )
    steps = warmup + pairs
    train_cfg = TrainConfig(
        max_steps=10 * steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        seq_len=args.seq_len,
        precision=args.precision,
        save_every=10 * steps,
    )
    # constant lr so that the bare loop (fixed lr) takes the same steps as ours
    optim_cfg = OptimConfig(schedule="constant")
    torch.manual_seed(args.seed)
    ours_model = MultimodalLM(build_causal_lm(llm)).train()  # what train() builds (no encoders)
    bare_model = copy.deepcopy(ours_model.llm).train()
    n_params = sum(p.numel() for p in ours_model.parameters())

    batches = packed_batches(steps * args.grad_accum, args.batch_size, args.seq_len, args.vocab, args.seed)
    micro = [(b, TextStreamState()) for b in batches]
    bare_steps = [
        bare_inputs(batches[i : i + args.grad_accum]) for i in range(0, len(batches), args.grad_accum)
    ]

    ours_times: list[float] = []
    bare_times: list[float] = []
    loss_diffs: list[float] = []
    with tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stdout(io.StringIO()):
        ours = OurStep(ours_model, train_cfg, optim_cfg, Path(run_dir))
        bare = BareStep(bare_model, optim_cfg, train_cfg.grad_clip or math.inf, args.precision)
        stream = iter(micro)
        with ours.stop:
            for i in range(steps):
                # pairs alternate which side goes first (ours, bare, bare, ours, ...) so
                # that neither always runs right after the other
                if i % 2 == 0:
                    ours_s, ours_loss = timed(ours, stream)
                    bare_s, bare_loss = timed(bare, bare_steps[i])
                else:
                    bare_s, bare_loss = timed(bare, bare_steps[i])
                    ours_s, ours_loss = timed(ours, stream)
                loss_diffs.append(abs(ours_loss - float(bare_loss)))
                if i >= warmup:
                    ours_times.append(ours_s)
                    bare_times.append(bare_s)
        ours.close()

    ours_ms = 1000 * statistics.median(ours_times)
    bare_ms = 1000 * statistics.median(bare_times)
    ratio = ours_ms / bare_ms
    mean_ratio = statistics.fmean(ours_times) / statistics.fmean(bare_times)
    paired_ratio = statistics.median(o / b for o, b in zip(ours_times, bare_times, strict=True))
    tokens_per_step = sum(int((b.doc_ids >= 0).sum()) for b in batches) / steps

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, ", end="")
    print(f"torch.set_num_threads({args.threads}) -> {torch.get_num_threads()} threads")
    print(
        f"model: llama hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, "
        f"{n_params / 1e6:.2f}M params, {args.precision}; batch {args.batch_size} x {args.seq_len} "
        f"x grad_accum {args.grad_accum} (~{tokens_per_step:.0f} non-pad tokens/step)"
    )
    print(f"{warmup} warm-up steps, then {pairs} interleaved pairs (ours, bare)")
    print(f"{'step':<8} {'median_ms':>10} {'mean_ms':>10} {'min_ms':>10} {'max_ms':>10}")
    for name, times in (("ours", ours_times), ("bare", bare_times)):
        ms = [1000 * t for t in times]
        print(
            f"{name:<8} {statistics.median(ms):>10.1f} {statistics.fmean(ms):>10.1f} "
            f"{min(ms):>10.1f} {max(ms):>10.1f}"
        )
    print(f"overhead_ratio (median ours / median bare): {ratio:.4f}")
    print(f"median of per-pair ratios: {paired_ratio:.4f}   ratio of means: {mean_ratio:.4f}")
    print(f"max |loss_ours - loss_bare| over {steps} steps: {max(loss_diffs):.3g}")

    summary = {
        "bench": "overhead",
        "overhead_ratio": round(ratio, 4),
        "ours_ms": round(ours_ms, 2),
        "bare_ms": round(bare_ms, 2),
        "paired_overhead_ratio": round(paired_ratio, 4),
        "mean_overhead_ratio": round(mean_ratio, 4),
        "pairs": pairs,
        "warmup": warmup,
        "max_loss_diff": max(loss_diffs),
        "hidden": args.hidden,
        "layers": args.layers,
        "vocab": args.vocab,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "precision": args.precision,
        "params": n_params,
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
