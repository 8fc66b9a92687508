"""The end of `mmpt demo`: exports, ``OUT/summary.json`` and the printed summary."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmpretrain.errors import UserError


def export_models(checkpoint: Path, out: Path) -> dict[str, Any]:
    """Export ``checkpoint`` natively (always) and to transformers where the model maps;
    returns ``{"native": {...}, "hf": {...}}`` with the path or the reason it did not map."""
    from mmpretrain.export import export_checkpoint
    from mmpretrain.export.mapping import UnmappableError

    native = export_checkpoint(checkpoint, "safetensors", out / "native", overwrite=True)
    print(f"  {native.message()}", flush=True)
    exports: dict[str, Any] = {
        "native": {"path": str(native.out), "class": native.model_class, "summary": native.summary}
    }
    try:
        hf = export_checkpoint(checkpoint, "hf", out / "hf", overwrite=True)
    except UnmappableError as exc:
        reasons = [f"{part}: {why}" for part, why in exc.parts]
        exports["hf"] = {"path": None, "reason": reasons}
        print("  transformers (--to hf): not exported, the model does not map:", flush=True)
        for reason in reasons:
            print(f"    - {reason}", flush=True)
        print(
            "    (a single-tower VLM or speech LM does: see README `Export`; the native export "
            "above loads with MultimodalLM.from_pretrained)",
            flush=True,
        )
    except UserError as exc:
        exports["hf"] = {"path": None, "reason": [str(exc)]}
        print(f"  transformers (--to hf): not exported: {exc}", flush=True)
    else:
        exports["hf"] = {"path": str(hf.out), "class": hf.model_class, "summary": hf.summary}
        print(f"  {hf.message()}", flush=True)
    return exports


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _stage_entry(stage: Any, recipe_stage: dict[str, Any]) -> dict[str, Any]:
    from mmpretrain.train.metrics import read_metrics

    records = read_metrics(stage.run_dir)
    sources = sorted({k.split("/", 1)[1] for r in records for k in r if k.startswith("tokens/")})
    last = records[-1] if records else {}
    tokens = {name: int(last.get(f"tokens/{name}", 0)) for name in sources}
    total = sum(tokens.values())
    frozen = sorted(k for k, v in stage.run.model.trainable.items() if not v)
    return {
        "steps": stage.config.steps,
        "description": stage.config.description,
        "frozen": frozen,
        "loss_first": records[0]["loss"] if records else None,
        "loss_last": last.get("loss"),
        "loss_last_mean10": _mean([r["loss"] for r in records[-10:]]),
        "tokens": int(last.get("tokens", 0)),
        "tokens_per_s": _mean([r["tokens_per_s"] for r in records if "tokens_per_s" in r]),
        "packing_efficiency": _mean([r["packing_efficiency"] for r in records if "packing_efficiency" in r]),
        "tokens_by_source": tokens,
        "token_share": {name: round(n / total, 4) for name, n in tokens.items()} if total else {},
        "heldout": recipe_stage.get("heldout", {}),
    }


def summarize(
    *,
    out: Path,
    quick: bool,
    plan: Any,
    built: dict[str, Any],
    stages: list[Any],
    recipe_summary: dict[str, Any],
    scores: dict[str, Any],
    exports: dict[str, Any],
    plots: dict[str, Path],
    phases: dict[str, float],
    seconds: float,
    log: Path | None,
) -> dict[str, Any]:
    """Everything ``summary.json`` holds (``tasks`` first: the few-shot results)."""
    from mmpretrain.model.build import build_model

    final = stages[-1]
    llm = final.run.model.llm
    model = build_model(final.run.model)
    parts: dict[str, int] = {}
    for name, parameter in model.named_parameters():
        part = ".".join(name.split(".")[:2]) if not name.startswith("llm.") else "llm"
        parts[part] = parts.get(part, 0) + parameter.numel()
    from mmpretrain.kernels import kernel_rows

    kernels = kernel_rows(model)
    stage_entries = {
        s.name: _stage_entry(s, recipe_summary.get("stages", {}).get(s.name, {})) for s in stages
    }
    all_tokens = sum(e["tokens"] for e in stage_entries.values())
    train_seconds = phases.get("train")
    run_dir = out / "train"
    return {
        "tasks": {name: r.summary(plan.shots[0]) for name, r in scores.items()},
        "learned": {name: r.learned(plan.shots[0]) for name, r in scores.items()},
        "quick": quick,
        "seconds": round(seconds, 1),
        "phases_seconds": phases,
        "data": built,
        "model": {
            "parameters": sum(parts.values()),
            "parts": parts,
            "llm": f"{llm.name}, {llm.num_layers} layers x {llm.hidden_size}",
            "encoders": {k: v.name for k, v in final.run.model.encoders.items()},
            "connectors": {k: v.name for k, v in final.run.model.connectors.items()},
            "kernels": {
                "modules": len(kernels),
                "kinds": sorted({r.kind for r in kernels}),
                "backends": sorted({r.backend for r in kernels}),
            },
        },
        "stages": stage_entries,
        "steps": sum(e["steps"] for e in stage_entries.values()),
        "tokens": all_tokens,
        "tokens_per_s": (all_tokens / train_seconds) if train_seconds else None,
        "packing_efficiency": _mean(
            [e["packing_efficiency"] for e in stage_entries.values() if e["packing_efficiency"]]
        ),
        "heldout_domains": recipe_summary.get("domains", {}),
        "exports": exports,
        "plots": {name: str(path) for name, path in plots.items()},
        "run_dir": str(run_dir),
        "eval_reports": str(run_dir / "eval"),
        "tensorboard": f"tensorboard --logdir {run_dir / 'tb'}",
        "log": str(log) if log else None,
    }


def _f(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def format_summary(summary: dict[str, Any], out: Path) -> str:
    """The printed summary."""
    from mmpretrain.demo_eval import HEADLINE

    model, data = summary["model"], summary["data"]
    parts = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in model["parts"].items())
    kernels = model["kernels"]
    lines = [
        "",
        f"demo summary{' (--quick)' if summary['quick'] else ''}: {out}",
        f"  data        {data['demo']:,} demo samples ({data['images']:,} pictures, "
        f"{data['audio']:,} speech clips) "
        f"+ {data['heldout']} held-out; derived: qa {data['qa']:,}, align {data['align']:,}, "
        f"grid {data['grid']:,}, "
        f"demo_text {data['demo_text']:,}; Shakespeare {data['text']:,} documents",
        f"  model       {model['parameters'] / 1e6:.2f}M parameters ({parts}); {model['llm']}; "
        f"{kernels['modules']} Linear modules {'/'.join(kernels['kinds'])} "
        f"({'/'.join(kernels['backends'])})",
        f"  steps       {summary['steps']:,} in {len(summary['stages'])} stages, "
        f"{summary['tokens']:,} tokens "
        f"(packed positions), {_f(summary['tokens_per_s'], ',.0f')} tokens/s over the training phase, "
        f"packing efficiency {_f(summary['packing_efficiency'])}",
        "  stages      name    steps  frozen                       "
        "loss first -> last (mean of last 10)  tokens/s  token share",
    ]
    for name, s in summary["stages"].items():
        share = ", ".join(f"{k} {v:.0%}" for k, v in s["token_share"].items())
        lines.append(
            f"              {name:<7} {s['steps']:>5}  {', '.join(s['frozen']) or '-':<28} "
            f"{_f(s['loss_first'])} -> {_f(s['loss_last'])} ({_f(s['loss_last_mean10'])}){'':<17}"
            f"{_f(s['tokens_per_s'], ',.0f'):>8}  {share}"
        )
    domains = summary["heldout_domains"]
    if domains:
        text = "; ".join(f"{d} {_f(v['before'])} -> {_f(v['after'])}" for d, v in domains.items())
        lines.append(f"  held-out    loss before the first stage -> after the last: {text}")
    lines.append(
        "  few-shot    trained vs the same model untrained vs chance (held-out pictures and speech):"
    )
    from mmpretrain.demo_eval import format_table

    lines += ["  " + line for line in format_table(_scores_view(summary), _shots(summary))]
    learned = [name for name in HEADLINE if summary["learned"].get(name)]
    missed = [name for name in HEADLINE if name in summary["learned"] and not summary["learned"][name]]
    verdict = f"learned: {', '.join(learned) or 'none'}"
    lines.append(
        f"              {verdict}"
        + (f"; not above untrained, chance and majority: {', '.join(missed)}" if missed else "")
    )
    exports = summary["exports"]
    lines.append(f"  export      native: {exports['native']['path']} ({exports['native']['summary']})")
    hf = exports.get("hf", {})
    if hf.get("path"):
        lines.append(f"              transformers: {hf['path']} ({hf.get('class')})")
    else:
        lines.append(
            f"              transformers: not exported: {'; '.join(hf.get('reason') or ['-'])[:300]}"
        )
    lines += [
        f"  plots       {', '.join(Path(p).name for p in summary['plots'].values())} in "
        f"{Path(next(iter(summary['plots'].values()))).parent if summary['plots'] else '-'}",
        f"  eval        {summary['eval_reports']}/{{trained,untrained,chance}}.json "
        "(+ .md tables, .png, predictions)",
        f"  TensorBoard {summary['tensorboard']}",
        f"  summary     {out / 'summary.json'}" + (f"; log {summary['log']}" if summary["log"] else ""),
        "  took        "
        + f"{summary['seconds']:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in summary["phases_seconds"].items())
        + ")",
    ]
    return "\n".join(lines)


def _shots(summary: dict[str, Any]) -> list[int]:
    shots: set[int] = set()
    for task in summary["tasks"].values():
        shots.update(int(k) for k in task["by_shots"]["trained"])
    return sorted(shots)


def _scores_view(summary: dict[str, Any]) -> dict[str, Any]:
    """TaskScores rebuilt from summary.json (so the table prints from the file's content)."""
    from mmpretrain.demo_eval import TaskScores

    return {
        name: TaskScores(
            name,
            t["metric"],
            t["lower_is_better"],
            t["queries"],
            {m: {int(k): v for k, v in by.items()} for m, by in t["by_shots"].items()},
            t["chance"],
            t["majority"],
        )
        for name, t in summary["tasks"].items()
    }


def write_summary(out: Path, summary: dict[str, Any]) -> str:
    """Write ``out/summary.json`` and ``out/summary.txt``; returns the printed text."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    text = format_summary(summary, out)
    (out / "summary.txt").write_text(text.lstrip("\n") + "\n", encoding="utf-8")
    return text
