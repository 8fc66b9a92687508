"""Evaluation reports: results JSON, a markdown table, a PNG of score vs shots, and the
per-query predictions.

``--out results.json`` writes ``results.json``, ``results.md``, ``results.png`` and
``results.predictions.jsonl`` side by side. Every entry of ``results.json`` stands alone:

```json
{"task": "shapes_count", "shots": 4, "metric": "vqa_accuracy", "score": 0.41, "n": 100,
 "seed": 0, "demos": "random", "note": "", "checkpoint": "runs/demo/checkpoints/step_0000600",
 "config_hash": "3f2a...", "step": 600,
 "timing": {"seconds": 3.2, "queries_per_s": 31.2, "forward_tokens": 18234, "prefix_runs": 1}}
```
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmpretrain.eval.evaluate import ShotResult

RESULTS_KEYS = (
    "task",
    "shots",
    "metric",
    "score",
    "n",
    "seed",
    "demos",
    "note",
    "checkpoint",
    "config_hash",
    "step",
    "timing",
)
"""Keys of every entry in ``results.json`` (the schema tests pin)."""

TIMING_KEYS = ("seconds", "queries_per_s", "forward_tokens", "prefix_runs")


def result_entries(results: Sequence[ShotResult], source: dict[str, Any]) -> list[dict[str, Any]]:
    """One self-contained JSON entry per (task, shots), with the checkpoint, its config
    hash and step from ``source``."""
    entries = []
    for result in results:
        entry = result.as_dict()
        entry.update(
            checkpoint=source.get("checkpoint"),
            config_hash=source.get("config_hash"),
            step=source.get("step"),
        )
        entries.append({key: entry[key] for key in RESULTS_KEYS})
    return entries


def _format_score(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def markdown_table(entries: Sequence[dict[str, Any]]) -> str:
    """Tasks as rows, shot counts as columns (score with the metric named per row)."""
    shots = sorted({e["shots"] for e in entries})
    tasks: dict[tuple[str, str], dict[int, float]] = {}
    for e in entries:
        tasks.setdefault((e["task"], e["metric"]), {})[e["shots"]] = e["score"]
    header = "| task | metric | " + " | ".join(f"{k}-shot" for k in shots) + " |"
    rule = "|---|---|" + "---:|" * len(shots)
    lines = [header, rule]
    for (task, metric), scores in tasks.items():
        cells = [_format_score(scores[k]) if k in scores else "" for k in shots]
        lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_scores(entries: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """A PNG with one panel per task: score against the number of shots."""
    import matplotlib

    from mmpretrain.eval.metrics import LOWER_IS_BETTER

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for e in entries:
        tasks.setdefault((e["task"], e["metric"]), []).append((e["shots"], e["score"]))
    count = max(len(tasks), 1)
    columns = min(count, 3)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, ((task, metric), points) in zip(axes.flat, tasks.items(), strict=False):
        points.sort()
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.plot(xs, ys, marker="o")
        ax.set_xticks(xs)
        finite = [y for y in ys if math.isfinite(y)]
        if finite:  # scores are fractions (CIDEr and error rates may pass 1): start at 0
            ax.set_ylim(min(0.0, *finite), max(1.0, *finite) * 1.05)
        ax.set_xlabel("shots")
        ax.set_ylabel(f"{metric} (lower is better)" if metric in LOWER_IS_BETTER else metric)
        ax.set_title(task)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def report_paths(out: Path) -> dict[str, Path]:
    """Where a report for ``out`` (``results.json``) puts its files."""
    stem = out.with_suffix("") if out.suffix == ".json" else out
    return {
        "json": out if out.suffix == ".json" else out.with_suffix(".json"),
        "markdown": stem.with_suffix(".md"),
        "plot": stem.with_suffix(".png"),
        "predictions": Path(f"{stem}.predictions.jsonl"),
    }


def write_report(
    out: Path, results: Sequence[ShotResult], source: dict[str, Any], settings: dict[str, Any]
) -> dict[str, Path]:
    """Write the results JSON, markdown table, PNG plot and predictions; returns the paths."""
    from mmpretrain import __version__

    paths = report_paths(out)
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    entries = result_entries(results, source)
    payload = {
        "results": entries,
        "checkpoint": source.get("checkpoint"),
        "config_hash": source.get("config_hash"),
        "step": source.get("step"),
        "settings": settings,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mmpretrain_version": __version__,
    }
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown_table(entries), encoding="utf-8")
    plot_scores(entries, paths["plot"], title=str(source.get("checkpoint") or ""))
    with paths["predictions"].open("w", encoding="utf-8") as handle:
        for result in results:
            for record in result.predictions:
                row = {"task": result.task, "shots": result.shots, **record}
                handle.write(json.dumps(row) + "\n")
    return paths
