"""`mmpt eval CHECKPOINT --task T[,T2...] --shots 0,4,8 [--limit N] [--out results.json]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmpretrain.errors import UserError


def parse_shots(text: str) -> list[int]:
    """``"0,4,8"`` -> ``[0, 4, 8]`` (sorted, unique, each >= 0)."""
    try:
        shots = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UserError(f"--shots takes comma-separated integers like 0,4,8, got {text!r}") from None
    if not shots or shots[0] < 0:
        raise UserError(f"--shots takes comma-separated integers >= 0 like 0,4,8, got {text!r}")
    return shots


def resolve_device(name: str) -> str:
    """``auto`` -> cuda when available, else cpu; anything else as given (checked)."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here (use --device cpu)")
    return name


LM_EVAL_PREFIX = "lm-eval:"
"""``--task lm-eval:TASK.yaml`` runs an lm-evaluation-harness task YAML on the text model."""


def lm_eval_command(args: argparse.Namespace, task_files: list[str]) -> int:
    """Run lm-eval task YAMLs in-process on the checkpoint's LLM; print (and write) the results."""
    import json

    from mmpretrain.eval.text_harness import run_lm_eval

    results = run_lm_eval(args.checkpoint, task_files, limit=args.limit)
    metrics = {task: values for task, values in results.get("results", {}).items()}
    for task, values in metrics.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float))
        print(f"{task}: {shown}")
    if args.out:
        Path(args.out).write_text(json.dumps({"harness": "lm-eval", "results": metrics}, indent=2) + "\n")
    return 0


def eval_command(args: argparse.Namespace) -> int:
    """Run the evaluation; print one line per (task, shots) and the table; write the report."""
    from mmpretrain.eval.engine import Evaluator
    from mmpretrain.eval.evaluate import evaluate_task, stderr_progress
    from mmpretrain.eval.model_io import load_for_eval
    from mmpretrain.eval.report import markdown_table, result_entries, write_report
    from mmpretrain.eval.tasks import load_task

    shots = parse_shots(args.shots)
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    names = [name.strip() for name in args.task.split(",") if name.strip()]
    if not names:
        raise UserError("--task names no task; see `mmpt list tasks`")
    harness = [name.removeprefix(LM_EVAL_PREFIX) for name in names if name.startswith(LM_EVAL_PREFIX)]
    if harness:
        if len(harness) != len(names):
            raise UserError(
                f"--task: give {LM_EVAL_PREFIX}FILE tasks (lm-evaluation-harness) in a command of their own"
            )
        return lm_eval_command(args, harness)
    tasks = [load_task(name, args.set or []) for name in names]  # a bad task fails before loading
    device = resolve_device(args.device)
    loaded = load_for_eval(args.checkpoint, device)
    print(f"evaluating {loaded.checkpoint} on {device}", file=sys.stderr)
    evaluator = Evaluator(
        loaded.model,
        loaded.tokenizer,
        loaded.processors,
        batch_size=args.batch_size,
        prefix_cache=not args.no_prefix_cache,
    )
    results = []
    for task in tasks:
        for k in shots:
            total = len(task.queries()) if args.limit is None else min(args.limit, len(task.queries()))
            advance, close = stderr_progress(total, f"{task.name} {k}-shot")
            try:
                result = evaluate_task(
                    evaluator, task, k, limit=args.limit, demos=args.demos, seed=args.seed, progress=advance
                )
            finally:
                close()
            note = f" ({result.note})" if result.note else ""
            print(
                f"{task.name} {k}-shot: {result.metric} {result.score:.4f} on {result.n} queries, "
                f"{result.queries_per_s:.1f} queries/s{note}",
                file=sys.stderr,
            )
            results.append(result)
    source = {"checkpoint": loaded.checkpoint, "config_hash": loaded.config_hash, "step": loaded.step}
    print(markdown_table(result_entries(results, source)), end="")
    if args.out:
        settings = {
            "tasks": names,
            "shots": shots,
            "limit": args.limit,
            "demos": args.demos,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "device": device,
            "prefix_cache": not args.no_prefix_cache,
            "task_overrides": list(args.set or []),
        }
        paths = write_report(Path(args.out), results, source, settings)
        print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
