"""`mmpt plot RUN_DIR [RUN_DIR ...] [--out DIR]`: PNG curves of one or more runs.

A run directory is any of:

- a training run (``metrics.jsonl`` from :func:`~mmpretrain.train.loop.train`);
- a recipe run (``metrics.jsonl`` whose records carry ``stage`` / ``stage_step``, written by
  the recipe runner), whose held-out evaluations (``heldout/<domain>/loss``) are plotted too;
- a directory of stages ``stages/NN-name/metrics.jsonl`` without a merged file (the demo's
  layout when it runs stages one by one): the stages are read in name order, one after
  the other.

Files written (each only when its data exist): ``loss.png`` (training loss against tokens
seen, one colour per stage, plus held-out loss per domain), ``lr.png`` (learning-rate
schedule against steps), ``throughput.png`` (tokens/s and packing efficiency),
``data_mix.png`` (tokens per mixing source, from the ``tokens/<name>`` counters) and
``fewshot.png`` (score against shots per task, from evaluation reports: ``results.json``
files written by ``mmpt eval --out`` anywhere below the run directory, one line per file).
TensorBoard (``RUN_DIR/tb``) stays the live view; these are for reports and comparisons.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmpretrain.errors import UserError

METRICS_FILE = "metrics.jsonl"
STAGES_DIR = "stages"


@dataclass
class Stage:
    """The training records of one stage (a plain run is one stage named after its
    directory), on global steps and global tokens."""

    name: str
    records: list[dict[str, Any]]
    """Each with ``step`` and ``tokens`` made global (``stage_step`` keeps the stage's own)."""


@dataclass
class RunCurves:
    """What :func:`read_run` found in one run directory."""

    label: str
    path: Path
    stages: list[Stage]
    evals: list[dict[str, Any]] = field(default_factory=list)
    """Held-out evaluations (recipe ``heldout/<domain>/loss`` records) on global steps."""
    reports: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Few-shot results per report file (label -> entries with task, shots, metric, score)."""

    def records(self) -> list[dict[str, Any]]:
        return [r for stage in self.stages for r in stage.records]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash mid-write
        if isinstance(record, dict):
            out.append(record)
    return out


def _stage_label(directory: Path) -> str:
    """``stages/01-align`` -> ``align``."""
    return re.sub(r"^\d+[-_]", "", directory.name)


def _globalise(stages: list[tuple[str, list[dict[str, Any]], int]]) -> list[Stage]:
    """Stage records with global tokens: a stage starting at global step ``offset`` adds
    the tokens the earlier stages had seen at that step (branches start from their parent)."""
    out: list[Stage] = []
    seen: list[tuple[int, int]] = []  # (global step, global tokens) of earlier stages
    for name, records, offset in stages:
        before = [tokens for step, tokens in seen if step <= offset]
        base = max(before) if before else 0
        converted = []
        for r in records:
            record = dict(r)
            record.setdefault("stage_step", r.get("step", 0))
            record["step"] = offset + int(record["stage_step"])
            if "tokens" in r:
                record["stage_tokens"] = r["tokens"]
                record["tokens"] = base + int(r["tokens"])
            converted.append(record)
        out.append(Stage(name, converted))
        seen += [(r["step"], r["tokens"]) for r in converted if "tokens" in r]
    return out


def _train_record(record: dict[str, Any]) -> bool:
    return "loss" in record and "step" in record


def read_run(path: Path, label: str | None = None) -> RunCurves:
    """The curves of one run directory (see the module docstring for the layouts)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"mmpt plot: {path} is not a directory (give run directories)")
    stage_dirs = sorted(d for d in (path / STAGES_DIR).glob("*") if (d / METRICS_FILE).is_file())
    evals: list[dict[str, Any]] = []
    if (path / METRICS_FILE).is_file():
        records = _read_jsonl(path / METRICS_FILE)
        evals = [r for r in records if any(k.startswith("heldout/") for k in r)]
        train = [r for r in records if _train_record(r)]
        if any("stage" in r for r in train):  # a recipe's merged file: split by stage
            grouped: dict[str, list[dict[str, Any]]] = {}
            offsets: dict[str, int] = {}
            for r in train:
                name = str(r.get("stage"))
                grouped.setdefault(name, []).append(r)
                offsets.setdefault(name, int(r["step"]) - int(r.get("stage_step", r["step"])))
            stages = _globalise([(n, rs, offsets[n]) for n, rs in grouped.items()])
        else:
            stages = _globalise([(path.name, train, 0)])
    elif stage_dirs:
        parts = []
        offset = 0
        for directory in stage_dirs:
            train = [r for r in _read_jsonl(directory / METRICS_FILE) if _train_record(r)]
            parts.append((_stage_label(directory), train, offset))
            offset += max((int(r["step"]) for r in train), default=0)
        stages = _globalise(parts)
    else:
        raise UserError(
            f"mmpt plot: {path} holds no {METRICS_FILE} (nor stages/*/{METRICS_FILE}): "
            "give a run directory written by `mmpt train`, a recipe or `mmpt demo`"
        )
    run = RunCurves(label or path.name, path, [s for s in stages if s.records], evals)
    run.reports = find_reports(path)
    return run


def find_reports(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Few-shot reports below ``path``: JSON files holding ``results`` entries with task,
    shots and score (``mmpt eval --out``), by file stem."""
    reports: dict[str, list[dict[str, Any]]] = {}
    for file in sorted(path.rglob("*.json")):
        if file.stat().st_size > 50_000_000:
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        entries = data.get("results") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            continue
        good = [
            e
            for e in entries
            if isinstance(e, dict) and {"task", "shots", "score"} <= set(e) and isinstance(e["shots"], int)
        ]
        if good:
            reports[file.stem] = good
    return reports


# ------------------------------------------------------------------------------ drawing


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _smooth(values: Sequence[float], weight: float = 0.8) -> list[float]:
    """An exponential moving average (TensorBoard's smoothing), debiased at the start."""
    out, avg = [], 0.0
    for i, v in enumerate(values):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** (i + 1)))
    return out


def _colours(n: int) -> list[Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def _save(figure: Any, path: Path) -> Path:
    plt = _pyplot()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _series(stage: Stage, key: str, x: str = "step") -> tuple[list[float], list[float]]:
    points = [(r[x], r[key]) for r in stage.records if key in r and x in r and _finite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _segments(runs: Sequence[RunCurves]) -> list[tuple[str, Stage, Any]]:
    """(legend label, stage, colour): colours by stage for one run, by run for several."""
    out = []
    if len(runs) == 1:
        colours = _colours(len(runs[0].stages))
        for stage, colour in zip(runs[0].stages, colours, strict=True):
            out.append((stage.name, stage, colour))
        return out
    for run, colour in zip(runs, _colours(len(runs)), strict=True):
        for i, stage in enumerate(run.stages):
            label = run.label if len(run.stages) == 1 else f"{run.label}: {stage.name}"
            out.append((label if i == 0 or len(run.stages) > 1 else "", stage, colour))
    return out


def plot_loss(runs: Sequence[RunCurves], path: Path) -> Path | None:
    """Training loss against tokens seen (raw and smoothed), one colour per stage (one
    run) or per run (several), held-out loss per domain as markers."""
    segments = [s for s in _segments(runs) if _series(s[1], "loss", "tokens")[0]]
    if not segments:
        return None
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(7.5, 4.2))
    for label, stage, colour in segments:
        xs, ys = _series(stage, "loss", "tokens")
        marker = "o" if len(xs) <= 3 else None  # a short stage is still visible
        ax.plot(xs, ys, color=colour, alpha=0.25, linewidth=0.8)
        ax.plot(xs, _smooth(ys), color=colour, linewidth=1.6, marker=marker, label=label or None)
        for key, style in (("loss_text", ":"), ("loss_media_codes", "--")):
            kx, ky = _series(stage, key, "tokens")
            if kx:
                ax.plot(kx, _smooth(ky), color=colour, linestyle=style, linewidth=1.0, label=f"{label} {key}")
    markers = "osD^v<>"
    greys = ["black", "dimgray", "darkgray", "silver"]
    for r_index, run in enumerate(runs):
        tokens_at = {r["step"]: r["tokens"] for r in run.records() if "tokens" in r}
        domains = sorted({k.split("/")[1] for r in run.evals for k in r if k.endswith("/loss")})
        for i, domain in enumerate(domains):
            points = [
                (tokens_at.get(r["step"], _nearest(tokens_at, r["step"])), r[f"heldout/{domain}/loss"])
                for r in run.evals
                if f"heldout/{domain}/loss" in r
            ]
            name = f"held-out {domain}" + (f" ({run.label})" if len(runs) > 1 else "")
            ax.plot(
                *zip(*points, strict=True), marker=markers[i % len(markers)], linestyle="--",
                color=greys[r_index % len(greys)], label=name,
            )  # fmt: skip
    ax.set_xlabel("tokens seen (all stages)")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title("training loss" + (f": {_short(runs[0].path)}" if len(runs) == 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(figure, path)


def _short(path: Path) -> str:
    """The last two parts of a path (``demo/train``)."""
    return "/".join(path.resolve().parts[-2:])


def _nearest(tokens_at: dict[int, int], step: int) -> int:
    if not tokens_at:
        return 0
    return tokens_at[min(tokens_at, key=lambda s: abs(s - step))]


def plot_lr(runs: Sequence[RunCurves], path: Path) -> Path | None:
    """The learning rate each stage used, against global steps."""
    segments = [s for s in _segments(runs) if _series(s[1], "lr")[0]]
    if not segments:
        return None
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(7.5, 3.6))
    for label, stage, colour in segments:
        xs, ys = _series(stage, "lr")
        ax.plot(xs, ys, color=colour, marker="o" if len(xs) <= 3 else None, label=label or None)
    ax.set_xlabel("step (all stages)")
    ax.set_ylabel("learning rate")
    ax.set_title("learning-rate schedule")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(figure, path)


def plot_throughput(runs: Sequence[RunCurves], path: Path) -> Path | None:
    """Tokens per second and packing efficiency against global steps."""
    segments = [s for s in _segments(runs) if _series(s[1], "tokens_per_s")[0]]
    if not segments:
        return None
    plt = _pyplot()
    has_packing = any(_series(stage, "packing_efficiency")[0] for _, stage, _ in segments)
    figure, axes = plt.subplots(
        2 if has_packing else 1, 1, figsize=(7.5, 5.6 if has_packing else 3.6), squeeze=False
    )
    top = axes[0][0]
    for label, stage, colour in segments:
        xs, ys = _series(stage, "tokens_per_s")
        top.plot(xs, ys, color=colour, marker="o" if len(xs) <= 3 else None, label=label or None)
    top.set_ylabel("tokens/s")
    top.set_title("throughput")
    top.grid(alpha=0.3)
    top.legend(fontsize=7)
    if has_packing:
        bottom = axes[1][0]
        for _, stage, colour in segments:
            xs, ys = _series(stage, "packing_efficiency")
            bottom.plot(xs, ys, color=colour, marker="o" if len(xs) <= 3 else None)
        bottom.set_ylabel("packing efficiency")
        bottom.set_ylim(0, 1.02)
        bottom.grid(alpha=0.3)
        bottom.set_xlabel("step (all stages)")
    else:
        top.set_xlabel("step (all stages)")
    return _save(figure, path)


def plot_data_mix(runs: Sequence[RunCurves], path: Path) -> Path | None:
    """The share of trained tokens per mixing source in each stage (from the cumulative
    ``tokens/<name>`` counters at the stage's last logged step), as stacked bars."""
    rows: list[tuple[str, dict[str, int]]] = []
    for run in runs:
        for stage in run.stages:
            last = stage.records[-1] if stage.records else {}
            tokens = {
                k.split("/", 1)[1]: int(v) for k, v in last.items() if k.startswith("tokens/") and _finite(v)
            }
            if sum(tokens.values()) > 0:
                rows.append((stage.name if len(runs) == 1 else f"{run.label}: {stage.name}", tokens))
    if not rows:
        return None
    plt = _pyplot()
    sources = sorted({name for _, tokens in rows for name in tokens})
    colours = dict(zip(sources, _colours(len(sources)), strict=True))
    figure, ax = plt.subplots(figsize=(7.5, 1.2 + 0.55 * len(rows)))
    for y, (_label, tokens) in enumerate(rows):
        total, left = sum(tokens.values()), 0.0
        for name in sources:
            share = tokens.get(name, 0) / total
            if share <= 0:
                continue
            ax.barh(y, share, left=left, color=colours[name])
            if share >= 0.06:
                ax.text(left + share / 2, y, f"{name} {share:.0%}", ha="center", va="center", fontsize=7)
            left += share
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[n]) for n in sources]
    below = -0.25 if len(rows) > 2 else -0.45
    ax.legend(
        handles,
        sources,
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, below),
        ncol=min(len(sources), 6),
    )
    ax.set_yticks(range(len(rows)), [label for label, _ in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the stage's trained tokens (positions, media included)")
    ax.set_title("data mix per stage")
    return _save(figure, path)


def plot_fewshot(runs: Sequence[RunCurves], path: Path) -> Path | None:
    """Score against shots, one panel per task, one line per report file (and run)."""
    lines: dict[tuple[str, str], list[tuple[str, list[tuple[int, float]]]]] = {}
    for run in runs:
        for stem, entries in run.reports.items():
            label = stem if len(runs) == 1 else f"{run.label}: {stem}"
            per_task: dict[tuple[str, str], list[tuple[int, float]]] = {}
            for e in entries:
                if _finite(e["score"]):
                    per_task.setdefault((e["task"], str(e.get("metric", ""))), []).append(
                        (e["shots"], e["score"])
                    )
            for key, points in per_task.items():
                lines.setdefault(key, []).append((label, sorted(points)))
    if not lines:
        return None
    plt = _pyplot()
    count = len(lines)
    columns = min(count, 3)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.3 * rows), squeeze=False)
    labels = sorted({label for series in lines.values() for label, _ in series})
    colours = dict(zip(labels, _colours(len(labels)), strict=True))
    colours.update({label: "gray" for label in labels if label.endswith("chance")})
    for ax, ((task, metric), series) in zip(axes.flat, lines.items(), strict=False):
        shots: set[int] = set()
        for label, points in series:
            xs = [p[0] for p in points]
            shots.update(xs)
            ys = [p[1] for p in points]
            if label.endswith("chance") and len(set(ys)) == 1:  # one level for every shot count
                ax.axhline(ys[0], linestyle="--", color=colours[label], label=label)
                continue
            ax.plot(xs, ys, marker="o", color=colours[label], label=label)
        ax.set_xticks(sorted(shots))
        ax.set_xlabel("shots")
        ax.set_ylabel(metric)
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[count:]:
        ax.axis("off")
    return _save(figure, path)


PLOTS = {
    "loss": plot_loss,
    "lr": plot_lr,
    "throughput": plot_throughput,
    "data_mix": plot_data_mix,
    "fewshot": plot_fewshot,
}


def plot_runs(run_dirs: Sequence[Path | str], out: Path | str | None = None) -> dict[str, Path]:
    """Read the runs and write every plot their data support into ``out`` (default:
    ``FIRST_RUN/plots``); returns ``{plot name: PNG path}``."""
    if not run_dirs:
        raise UserError("mmpt plot: give at least one run directory")
    paths = [Path(p) for p in run_dirs]
    labels = _unique_labels(paths)
    runs = [read_run(p, label) for p, label in zip(paths, labels, strict=True)]
    if not any(run.stages for run in runs):
        raise UserError(
            f"mmpt plot: no logged training steps in {', '.join(str(p) for p in paths)} "
            "(metrics.jsonl is empty: the run has not reached its first log_every step)"
        )
    target = Path(out) if out is not None else paths[0] / "plots"
    written = {}
    for name, draw in PLOTS.items():
        result = draw(runs, target / f"{name}.png")
        if result is not None:
            written[name] = result
    return written


def _unique_labels(paths: Sequence[Path]) -> list[str]:
    """Run labels: directory names, with the parent added where two are equal."""
    names = [p.name or str(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def plot_command(args: argparse.Namespace) -> int:
    """Handle `mmpt plot`: write the PNGs and print where they are."""
    written = plot_runs(args.run_dirs, args.out)
    for name, path in written.items():
        print(f"{name:<11} {path}")
    missing = [name for name in PLOTS if name not in written]
    if missing:
        print(f"(no data for: {', '.join(missing)})", file=sys.stderr)
    return 0
