"""Few-shot evaluation of `mmpt demo`: the trained model, the same architecture untrained,
and chance, on the built-in demo tasks.

Classification and counting are scored by log-likelihood ranking (``shapes_count`` with
``kind=classify``: the digits 0-6 ranked), so chance is exact: the mean over queries of
1 / number of choices. ``majority`` (always answering the most frequent correct answer) is
reported beside it: a model that only learned the answer prior reaches it without looking
at a picture. Captioning (CIDEr) and ASR (WER, lower is better) are generated; they have no
chance level and are reported, not promised.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TASKS: dict[str, list[str]] = {
    "shapes_classify": [],
    "shapes_count": ["kind=classify"],
    "shapes_caption": [],
    "shapes_asr": [],
}
"""The demo's tasks and their task-config overrides (besides ``heldout``)."""
HEADLINE = ("shapes_classify", "shapes_count")
"""The tasks the demo must learn (the others are reported)."""


@dataclass
class TaskScores:
    """One task's results: score per model and shot count, chance and majority."""

    name: str
    metric: str
    lower_is_better: bool
    queries: int
    scores: dict[str, dict[int, float]]
    """``{"trained": {0: x, 4: y}, "untrained": {...}}``."""
    chance: float | None
    majority: float | None

    def summary(self, shots: int = 0) -> dict[str, Any]:
        """The ``summary.json`` entry: headline numbers at ``shots`` plus every shot count."""
        return {
            "metric": self.metric,
            "lower_is_better": self.lower_is_better,
            "shots": shots,
            "queries": self.queries,
            "trained": self.scores["trained"].get(shots),
            "untrained": self.scores["untrained"].get(shots),
            "chance": self.chance,
            "majority": self.majority,
            "by_shots": {
                model: {str(k): v for k, v in sorted(values.items())} for model, values in self.scores.items()
            },
        }

    def learned(self, shots: int = 0) -> bool:
        """Trained beats untrained, chance and always-the-most-frequent-answer (where those
        exist) at ``shots``: above the answer prior, so the model used the media."""
        trained, untrained = self.scores["trained"].get(shots), self.scores["untrained"].get(shots)
        if trained is None or untrained is None:
            return False
        better: Callable[[float, float], bool] = (
            (lambda a, b: a < b) if self.lower_is_better else (lambda a, b: a > b)
        )
        baselines = [untrained, self.chance, self.majority]
        return all(better(trained, baseline) for baseline in baselines if baseline is not None)


def chance_and_majority(task: Any, limit: int | None) -> tuple[float | None, float | None]:
    """Expected accuracy of a uniform random choice, and of always giving the most
    frequent answer, over the task's queries (classification tasks only)."""
    if task.kind != "classify":
        return None, None
    queries = task.queries()[:limit] if limit is not None else task.queries()
    if not queries:
        return None, None
    chance = sum(1.0 / len(q.choices or [None]) for q in queries) / len(queries)
    answers = Counter((q.label if q.label is not None else q.answers[0]) for q in queries)
    majority = answers.most_common(1)[0][1] / len(queries)
    return chance, majority


def untrained_model(model_config: Any, seed: int) -> Any:
    """The same architecture with the random init a fresh run of ``seed`` starts from."""
    from mmpretrain.eval.model_io import eval_model_config
    from mmpretrain.model.build import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(eval_model_config(model_config))
    model.eval()
    model.requires_grad_(False)
    return model


def evaluate_demo(
    checkpoint: Path,
    heldout: Path,
    out_dir: Path,
    shots: Sequence[int],
    seed: int,
    limit: int | None = None,
    log: Callable[[str], None] = print,
    tasks: dict[str, list[str]] | None = None,
) -> dict[str, TaskScores]:
    """Evaluate the trained checkpoint and the untrained model on the demo tasks; writes
    ``out_dir/{trained,untrained,chance}.json`` (``mmpt eval --out`` reports: JSON, markdown
    table, PNG, predictions) and returns the scores by task."""
    from mmpretrain.eval.engine import Evaluator
    from mmpretrain.eval.evaluate import evaluate_task, stderr_progress
    from mmpretrain.eval.metrics import LOWER_IS_BETTER
    from mmpretrain.eval.model_io import load_for_eval
    from mmpretrain.eval.report import write_report
    from mmpretrain.eval.tasks import load_task

    tasks = TASKS if tasks is None else tasks
    loaded = load_for_eval(checkpoint, "cpu")
    models = {"trained": loaded.model, "untrained": untrained_model(loaded.model_config, seed)}
    specs = {name: load_task(name, [f"heldout={heldout}", *overrides]) for name, overrides in tasks.items()}
    results: dict[str, TaskScores] = {}
    settings = {"tasks": list(tasks), "shots": list(shots), "limit": limit, "demos": "random", "seed": 0}
    for label, model in models.items():
        evaluator = Evaluator(model, loaded.tokenizer, loaded.processors, batch_size=32)
        shot_results = []
        for name, task in specs.items():
            for k in shots:
                total = len(task.queries()) if limit is None else min(limit, len(task.queries()))
                advance, close = stderr_progress(total, f"{label} {name} {k}-shot")
                try:
                    result = evaluate_task(
                        evaluator, task, k, limit=limit, demos="random", seed=0, progress=advance
                    )
                finally:
                    close()
                shot_results.append(result)
                score = f"{result.metric} {result.score:.4f} ({result.n} queries)"
                log(f"  {label:<9} {name:<16} {k}-shot  {score}")
                entry = results.get(name)
                if entry is None:
                    chance, majority = chance_and_majority(task, limit)
                    entry = results[name] = TaskScores(
                        name, result.metric, result.metric in LOWER_IS_BETTER, result.n,
                        {"trained": {}, "untrained": {}}, chance, majority,
                    )  # fmt: skip
                entry.scores[label][k] = result.score
        source = {
            "checkpoint": loaded.checkpoint
            if label == "trained"
            else f"untrained (random init, seed {seed})",
            "config_hash": loaded.config_hash,
            "step": loaded.step if label == "trained" else 0,
        }
        write_report(out_dir / f"{label}.json", shot_results, source, {**settings, "model": label})
    _write_chance(out_dir / "chance.json", results, shots)
    return results


def _write_chance(path: Path, results: dict[str, TaskScores], shots: Sequence[int]) -> None:
    """Chance as a report of its own (``mmpt plot`` draws it as a dashed line)."""
    entries = [
        {"task": name, "shots": k, "metric": r.metric, "score": r.chance, "n": r.queries}
        for name, r in results.items()
        if r.chance is not None
        for k in shots
    ]
    payload = {"results": entries, "note": "uniform random choice among each query's choices"}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def format_table(results: dict[str, TaskScores], shots: Sequence[int]) -> list[str]:
    """The few-shot table of the summary: per task and shot count trained / untrained,
    with chance and majority."""
    head = "  task              metric         shots   trained  untrained   chance  majority"
    lines = [head]
    for name, r in results.items():
        for k in shots:
            trained, untrained = r.scores["trained"].get(k), r.scores["untrained"].get(k)
            metric = r.metric + (" (low)" if r.lower_is_better else "")
            lines.append(
                f"  {name:<17} {metric:<14} {k:>5}   {_num(trained):>7}  {_num(untrained):>9}  "
                f"{_num(r.chance):>7}  {_num(r.majority):>8}"
                + ("   <- learned" if name in HEADLINE and r.learned(k) else "")
            )
    return lines


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
