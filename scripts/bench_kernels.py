"""Kernel-layer benchmark: format correctness, quality of every kind on a tiny LM, and the
CPU cost of emulation.

1. Correctness. fp8: ``formats.round_to_fp8`` on all 65,536 bf16 bit patterns against the
   independent table reference (``mmpretrain.kernels.reference``: every e4m3 / e5m2 value
   decoded in float64, nearest value, ties to the even mantissa, saturating; NaN stays
   NaN); mismatches are counted. mxfp4 / nvfp4: the round trip against the specification
   written out block by block, on matrices spanning 2^-20..2^20. 2:4: when ``sparse24``
   is registered, every group of 4 weights along the input dim of its effective weight
   (fresh layers, and every sparse24 layer after the quality run) holds at most 2
   non-zeros; checked here, not with the kind's own checker.
2. Quality. A tiny Llama (``--hidden``, ``--layers``) on the built-in Shakespeare corpus
   (BPE of ``--vocab`` entries trained on its first documents; rows of ``--seq-len``
   tokens cut from the token stream), once dense and once per kind registered in
   ``KERNELS`` at run time (so every kind, whoever added it), with the rule
   ``{match: "llm.*", kind: NAME}`` and the kind's default options (lm_head and
   embeddings stay dense). Every run starts from the same weights and sees the same
   batches in the same order (AdamW, lr ``--lr`` with 10 warm-up steps then cosine, fp32,
   the kinds' ``on_step`` after each step). The runs train in lock-step (step i of every
   run, then step i + 1; the order rotates), so a shared machine's slow spells hit all of
   them alike. Losses are measured on held-out batches (the corpus's held-out split)
   before and after training: ``dense_loss_drop`` = (first - last) / first of the dense
   run, ``loss_ratio[kind]`` = last held-out loss of the kind / dense's.
3. Speed. ``emulation_overhead[kind]`` = median step time of the kind / dense's, from the
   same lock-step runs (steps after the first 3). On this CPU every kind runs its
   ``emulate`` backend, which reproduces the numerics with extra float32 ops: the figure
   is the price of emulation, not a speed-up (real low-precision or sparse matmuls need
   a GPU; the CUDA paths are chosen only where ``cuda_support`` says they can run).

    python scripts/bench_kernels.py --quick     # ~2-3 minutes on 2 cores
    python scripts/bench_kernels.py             # longer training, larger checks

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from typing import Any

import torch
from torch import nn

from mmpretrain.config import load_config
from mmpretrain.data.packing import PackedDocument, build_text_batch
from mmpretrain.data.text_sources import ShakespeareSource, iter_documents
from mmpretrain.data.tokenizer import train_bpe
from mmpretrain.data.types import PackedBatch
from mmpretrain.kernels import kernel_modules, kernel_rows, kernels_on_step, reference
from mmpretrain.model.build import build_model
from mmpretrain.model.packed import token_loss_sum
from mmpretrain.registry import KERNELS


def check_24(weight: torch.Tensor) -> tuple[int, int]:
    """(groups of 4 with more than 2 non-zeros, groups) along the last dim."""
    rows, cols = weight.shape
    if cols % 4:
        return rows * math.ceil(cols / 4), rows * math.ceil(cols / 4)
    nonzero = (weight.reshape(rows, cols // 4, 4) != 0).sum(-1)
    return int((nonzero > 2).sum()), nonzero.numel()


def correctness(quick: bool) -> dict[str, Any]:
    rows, cols = (64, 256) if quick else (256, 1024)
    out: dict[str, Any] = {
        "fp8_mismatches": {fmt: reference.fp8_mismatches(fmt) for fmt in ("e4m3", "e5m2")},
        "mxfp4_mismatches": reference.block_mismatches("mxfp4", rows, cols)[0],
        "nvfp4_mismatches": reference.block_mismatches("nvfp4", rows, cols)[0],
        "block_elements_checked": rows * cols,
    }
    if "sparse24" in KERNELS:
        entry = KERNELS.get("sparse24")
        kind_class: Any = entry.builder
        config_class: Any = entry.config_class
        bad = groups = 0
        for seed, (n_out, n_in) in enumerate([(64, 128), (96, 256), (256, 64)]):
            torch.manual_seed(seed)
            layer = kind_class.from_linear(nn.Linear(n_in, n_out), config_class(name="sparse24"))
            b, g = check_24(layer.effective_weight())
            bad, groups = bad + b, groups + g
        out["mask_24_bad_groups"], out["mask_24_groups"] = bad, groups
    return out


def shakespeare_rows(
    vocab: int, seq_len: int, rows: int, heldout: int, tokenizer_docs: int
) -> tuple[Any, list[list[int]], list[list[int]]]:
    """A BPE tokenizer and token rows of ``seq_len`` from the train and held-out splits."""
    train_docs = iter_documents(ShakespeareSource(split="train"))
    texts = [doc.text for doc in itertools.islice(train_docs, tokenizer_docs)]
    tokenizer = train_bpe(texts, vocab_size=vocab)

    def cut(documents: Any, needed: int, per_document: int) -> list[list[int]]:
        stream: list[int] = []
        out: list[list[int]] = []
        for doc in documents:
            stream.extend(tokenizer.encode(doc.text))
            stream.append(tokenizer.eos_id)
            taken = 0
            while len(stream) >= seq_len and len(out) < needed and taken < per_document:
                out.append(stream[:seq_len])
                del stream[:seq_len]
                taken += 1
            if taken == per_document:
                stream.clear()
            if len(out) >= needed:
                break
        return out

    train_rows = cut(iter_documents(ShakespeareSource(split="train")), rows, per_document=10**9)
    # one row per held-out document: the evaluation spans many plays, not one scene
    heldout_rows = cut(iter_documents(ShakespeareSource(split="heldout")), heldout, per_document=1)
    return tokenizer, train_rows, heldout_rows


def batches_of(rows: list[list[int]], batch_size: int, seq_len: int, pad_id: int) -> list[PackedBatch]:
    return [
        build_text_batch(
            [[PackedDocument(f"r{i + j}", row)] for j, row in enumerate(rows[i : i + batch_size])],
            seq_len,
            pad_id,
        )
        for i in range(0, len(rows) - batch_size + 1, batch_size)
    ]


def model_config(args: argparse.Namespace, vocab_size: int, kind: str | None) -> Any:
    cfg: Any = load_config("models/llama_tiny").model
    data = cfg.model_dump(mode="json")
    data["llm"].update(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 3,
        num_layers=args.layers,
        num_heads=args.hidden // 32,
        num_kv_heads=max(args.hidden // 64, 1),
        max_position_embeddings=args.seq_len,
    )
    data["kernels"] = [] if kind is None else [{"match": "llm.*", "kind": kind}]
    return type(cfg).model_validate(data)


def lr_at(step: int, base: float, total: int, warmup: int = 10) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def heldout_loss(model: nn.Module, batches: list[PackedBatch]) -> float:
    model.eval()
    total = count = 0.0
    for batch in batches:
        loss_sum, n = token_loss_sum(model(batch), batch.labels)
        total, count = total + float(loss_sum), count + float(n)
    model.train()
    return total / count


class Run:
    """One model (dense or one kind) with its optimizer, losses and step times."""

    def __init__(self, name: str, model: nn.Module, lr: float) -> None:
        self.name, self.model, self.lr = name, model, lr
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        self.losses: list[float] = []
        self.times: list[float] = []

    def step(self, step: int, total: int, batch: PackedBatch) -> None:
        start = time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, self.lr, total)
        loss_sum, count = token_loss_sum(self.model(batch), batch.labels)
        loss = loss_sum / count
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        kernels_on_step(self.model, step + 1)
        self.times.append(time.perf_counter() - start)
        self.losses.append(loss.item())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer steps and smaller checks (~2-3 min)")
    parser.add_argument("--steps", type=int, default=None, help="training steps of every run")
    parser.add_argument("--kinds", default=None, help="comma-separated kinds (default: every registered one)")
    parser.add_argument("--hidden", type=int, default=None, help="default 64 with --quick, else 128")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=512, help="learned BPE entries (+8 special tokens)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    steps = args.steps or (120 if args.quick else 400)
    args.hidden = args.hidden or (64 if args.quick else 128)
    torch.set_num_threads(args.threads)
    kinds = args.kinds.split(",") if args.kinds else KERNELS.names()
    started = time.perf_counter()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, cuda: ", end="")
    print(f"{torch.cuda.is_available()}; kinds run their emulate backend here unless the table says cuda")
    print("\n== correctness (independent references) ==")
    checks = correctness(args.quick)
    for fmt, bad in checks["fp8_mismatches"].items():
        print(f"fp8 {fmt}: {bad} mismatches over all 65,536 bf16 values")
    for fmt in ("mxfp4", "nvfp4"):
        checked = checks["block_elements_checked"]
        print(f"{fmt}: {checks[f'{fmt}_mismatches']} mismatches over {checked} elements")
    if "mask_24_groups" in checks:
        bad, groups = checks["mask_24_bad_groups"], checks["mask_24_groups"]
        print(f"sparse24 fresh layers: {bad} of {groups} groups not 2:4")

    eval_rows = 32 if args.quick else 96
    tokenizer, train_rows, heldout_rows = shakespeare_rows(
        args.vocab, args.seq_len, steps * args.batch_size, eval_rows, tokenizer_docs=300
    )
    pad = tokenizer.pad_id
    train_batches = batches_of(train_rows, args.batch_size, args.seq_len, pad)
    eval_batches = batches_of(heldout_rows, args.batch_size, args.seq_len, pad)
    if len(train_batches) < steps:
        raise SystemExit(f"only {len(train_batches)} training batches for {steps} steps")

    runs: list[Run] = []
    errors: dict[str, str] = {}
    for kind in [None, *kinds]:
        torch.manual_seed(args.seed)  # the same initial weights for every run
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = build_model(model_config(args, tokenizer.vocab_size, kind)).train()
        except Exception as exc:  # a kind that cannot build is reported, not fatal
            errors[str(kind)] = f"{type(exc).__name__}: {exc}"
            continue
        runs.append(Run(kind or "dense", model, args.lr))
    dense = runs[0]
    n_params = sum(p.numel() for p in dense.model.parameters())
    rows = {r.name: kernel_rows(r.model) for r in runs[1:]}
    print(
        f"\n== quality: tiny Llama ({n_params / 1e6:.2f}M parameters, hidden {args.hidden}, "
        f"{args.layers} layers), Shakespeare, {steps} steps x {args.batch_size} x {args.seq_len} tokens, "
        f"AdamW lr {args.lr}, fp32 =="
    )
    for name, kernel_table in rows.items():
        backends = sorted({row.backend for row in kernel_table})
        print(f"{name}: {len(kernel_table)} Linear modules swapped (llm.*), backend {', '.join(backends)}")

    first = {r.name: heldout_loss(r.model, eval_batches) for r in runs}
    for step in range(steps):
        if step % 20 == 0:
            print(f"step {step}/{steps} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        order = runs[step % len(runs) :] + runs[: step % len(runs)]
        for run in order:
            try:
                if run.name not in errors:
                    run.step(step, steps, train_batches[step])
            except Exception as exc:
                errors[run.name] = f"{type(exc).__name__} at step {step}: {exc}"
    last = {r.name: heldout_loss(r.model, eval_batches) for r in runs if r.name not in errors}

    mask_bad = mask_groups = 0
    for run in runs:
        for _, module in kernel_modules(run.model):
            if module.kind == "sparse24":
                b, g = check_24(module.effective_weight())
                mask_bad, mask_groups = mask_bad + b, mask_groups + g
    if mask_groups:
        checks["mask_24_bad_groups"] = checks.get("mask_24_bad_groups", 0) + mask_bad
        checks["mask_24_groups"] = checks.get("mask_24_groups", 0) + mask_groups
    dense_drop = (first["dense"] - last["dense"]) / first["dense"]
    dense_ms = 1000 * statistics.median(dense.times[3:])
    loss_ratio, overhead, final_train = {}, {}, {}
    print(
        f"\n{'kind':<14} {'heldout_first':>13} {'heldout_last':>12} {'loss_ratio':>10} {'train_last10':>12}",
        end="",
    )
    print(f" {'ms/step':>8} {'overhead':>8}")
    for run in runs:
        if run.name in errors:
            continue
        ms = 1000 * statistics.median(run.times[3:])
        train_last = statistics.fmean(run.losses[-10:])
        final_train[run.name] = round(train_last, 4)
        if run is not dense:
            loss_ratio[run.name] = round(last[run.name] / last["dense"], 4)
            overhead[run.name] = round(ms / dense_ms, 2)
        ratio = f"{last[run.name] / last['dense']:.4f}"
        print(
            f"{run.name:<14} {first[run.name]:>13.4f} {last[run.name]:>12.4f} {ratio:>10} "
            f"{train_last:>12.4f} {ms:>8.1f} {ms / dense_ms:>7.2f}x"
        )
    for name, error in errors.items():
        print(f"{name}: FAILED ({error})")
    print(f"dense_loss_drop (held-out, first -> last) = {dense_drop:.3f} (needs >= 0.30)")
    if "mask_24_groups" in checks:
        verdict = "all 2:4" if checks["mask_24_bad_groups"] == 0 else "NOT 2:4"
        print(f"sparse24 masks (fresh + trained layers): {checks['mask_24_groups']} groups, {verdict}")
    elapsed = time.perf_counter() - started
    print(f"total {elapsed:.0f} s")

    summary = {
        **checks,
        "masks_24_valid": checks.get("mask_24_bad_groups") == 0 if "mask_24_groups" in checks else None,
        "dense_loss_drop": round(dense_drop, 4),
        "loss_ratio": loss_ratio,
        "heldout_loss_first": {k: round(v, 4) for k, v in first.items()},
        "heldout_loss_last": {k: round(v, 4) for k, v in last.items()},
        "train_loss_last10": final_train,
        "emulation_overhead": overhead,
        "dense_ms_per_step": round(dense_ms, 1),
        "backends": {name: sorted({row.backend for row in table}) for name, table in rows.items()},
        "errors": errors,
        "steps": steps,
        "batch": [args.batch_size, args.seq_len],
        "params": n_params,
        "seconds": round(elapsed, 1),
        "quick": args.quick,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
