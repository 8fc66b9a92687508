"""Forgetting and stability-gap monitoring of a recipe: held-out domains (and few-shot
tasks) evaluated at the start of every stage, every ``monitor.every`` steps and at its
end, on the model of the checkpoint the stage just wrote.

Records go to ``RUN_DIR/eval.jsonl`` (the source of truth: one line per evaluation, with
the stage, its step and the global step along the recipe), ``RUN_DIR/metrics.jsonl``
(regenerated: every stage's training records and the evaluations, on global steps) and
``RUN_DIR/tb/NN-stage/`` (TensorBoard: one run per stage on global steps, so branches show
as separate curves). :func:`summarize` gives the before/after table of the recipe.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmpretrain.data.data_config import DataConfig
from mmpretrain.model.multimodal import MultimodalLM
from mmpretrain.recipes.config import MonitorConfig, Stage
from mmpretrain.run_config import RunConfig

EVAL_FILE = "eval.jsonl"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "recipe_summary.json"
TRAIN_KEYS = ("loss", "lr", "grad_norm", "tokens", "tokens_per_s")


@dataclass
class LoadedModel:
    """A stage's model at some step, with what evaluating it needs."""

    model: MultimodalLM
    tokenizer: Any
    codes: Any
    config: RunConfig


def load_stage_model(stage: Stage, checkpoint: Path | None, log: Any = print) -> tuple[LoadedModel, Any]:
    """The stage's model as the loop builds it, with ``checkpoint``'s weights (None: the
    stage's start: its init source, or the seeded fresh init); returns it and the init
    report (None for a stage checkpoint or a fresh init)."""
    from mmpretrain.train.data_setup import media_codes_for_run, tokenizer_for_run
    from mmpretrain.train.init_from import init_model_from, resolve_init_checkpoint, run_dir_of
    from mmpretrain.train.loop import build_checked_model, seed_everything

    cfg = stage.run
    assert cfg.data is not None
    stage.run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.train.seed)  # as train() does: a fresh init here is the run's own init
    init = resolve_init_checkpoint(cfg.train.init_from) if cfg.train.init_from else None
    tokenizer = tokenizer_for_run(
        cfg.data, stage.run_dir, log, init_run_dir=run_dir_of(init) if init else None
    )
    codes = media_codes_for_run(cfg.model, tokenizer, stage.run_dir)
    vocab = codes.vocab if codes is not None else None
    model = build_checked_model(cfg, tokenizer, vocab)
    report = None
    if checkpoint is not None:
        init_model_from(checkpoint, model, vocab)
    elif init is not None:
        report = init_model_from(init, model, vocab)
    return LoadedModel(model, tokenizer, codes, cfg), report


@torch.no_grad()
def heldout_loss(
    loaded: LoadedModel, domain: DataConfig, max_batches: int, batch_size: int
) -> tuple[float, int]:
    """Mean next-token loss (nats) of the model over the first ``max_batches`` packed
    batches of ``domain`` (seed 0: the same batches at every evaluation; a text domain
    stops at the end of its first epoch), and the label tokens it covers."""
    from mmpretrain.data.text_pipeline import TextStreamState
    from mmpretrain.model.build import media_processors
    from mmpretrain.model.packed import token_loss_sum
    from mmpretrain.train.data_setup import batch_stream

    cfg = loaded.config
    model = loaded.model
    was_training = model.training
    model.eval()
    processors = media_processors(cfg.model)
    stream = batch_stream(
        domain, loaded.tokenizer, processors, cfg.train.seq_len, batch_size, 0, None, loaded.codes
    )
    total, count = 0.0, 0
    try:
        for batch, state in itertools.islice(stream, max_batches):
            if isinstance(state, TextStreamState) and state.epoch > 0:
                break
            loss_sum, labels = token_loss_sum(model(batch), batch.labels)
            total += loss_sum.item()
            count += labels
    finally:
        model.train(was_training)
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # stops reader worker processes
    return (total / count if count else math.nan), count


def evaluate(loaded: LoadedModel, monitor: MonitorConfig) -> dict[str, float]:
    """``heldout/<domain>/loss`` and ``/ppl`` per domain, plus ``eval/<task>/<k>shot``."""
    record: dict[str, float] = {}
    batch_size = monitor.batch_size or loaded.config.train.batch_size
    for name, domain in monitor.domains.items():
        loss, tokens = heldout_loss(loaded, domain, monitor.max_batches, batch_size)
        record[f"heldout/{name}/loss"] = loss
        record[f"heldout/{name}/ppl"] = math.exp(min(loss, 50.0))
        record[f"heldout/{name}/tokens"] = tokens
    if monitor.tasks:
        from mmpretrain.eval.hook import evaluate_during_training
        from mmpretrain.eval.tasks import load_task

        specs = [load_task(t) if isinstance(t, str) else load_task(t.task, t.set) for t in monitor.tasks]
        scores = evaluate_during_training(
            loaded.model, loaded.tokenizer, loaded.config, specs, monitor.shots, monitor.limit
        )
        record.update(scores)
    return record


# ---------------------------------------------------------------------------- records


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file (none if missing; a line cut by a crash is ignored)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


class RecipeLog:
    """The recipe-level records: evaluations (``eval.jsonl``), the merged
    ``metrics.jsonl`` and per-stage TensorBoard runs, on global steps."""

    def __init__(self, run_dir: Path, stages: list[Stage]) -> None:
        self.run_dir = run_dir
        self.stages = stages
        self.evals = read_jsonl(run_dir / EVAL_FILE)

    def has_eval(self, stage: Stage, step: int) -> bool:
        """Whether the evaluation of ``stage`` after ``step`` of its steps is recorded."""
        return any(r["stage"] == stage.name and r["stage_step"] == step for r in self.evals)

    def drop_evals_after(self, stage: Stage, step: int) -> None:
        """Forget evaluations of ``stage`` after ``step`` (its run resumes from there)."""
        kept = [r for r in self.evals if r["stage"] != stage.name or r["stage_step"] <= step]
        if len(kept) != len(self.evals):
            self.evals = kept
            text = "".join(json.dumps(r) + "\n" for r in kept)
            (self.run_dir / EVAL_FILE).write_text(text, encoding="utf-8")

    def add_eval(self, stage: Stage, step: int, values: dict[str, float]) -> dict[str, Any]:
        """Record an evaluation (appended to eval.jsonl, also to TensorBoard)."""
        record = {"stage": stage.name, "stage_step": step, "step": stage.global_offset + step, **values}
        self.evals.append(record)
        with (self.run_dir / EVAL_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self._tensorboard(stage, [record], purge_from=None)
        return record

    def sync_training(self, stage: Stage, after_step: int) -> None:
        """Copy the stage's training records after ``after_step`` into TensorBoard and
        regenerate ``metrics.jsonl``."""
        from mmpretrain.train.metrics import read_metrics

        new = [r for r in read_metrics(stage.run_dir) if r.get("step", 0) > after_step]
        records = [
            {"step": stage.global_offset + r["step"], **{k: r[k] for k in TRAIN_KEYS if k in r}} for r in new
        ]
        self._tensorboard(stage, records, purge_from=stage.global_offset + after_step + 1)
        self.write_metrics()

    def write_metrics(self) -> None:
        """``metrics.jsonl``: every stage's training records and every evaluation, with
        ``stage`` and ``stage_step``, ``step`` being the global step (sorted by it)."""
        from mmpretrain.train.metrics import read_metrics

        rows: list[tuple[int, int, dict[str, Any]]] = []
        for stage in self.stages:
            for r in read_metrics(stage.run_dir):
                record = {
                    **r,
                    "stage": stage.name,
                    "stage_step": r["step"],
                    "step": stage.global_offset + r["step"],
                }
                rows.append((record["step"], 0, record))
        rows += [(r["step"], 1, r) for r in self.evals]
        rows.sort(key=lambda row: (row[0], row[1]))
        text = "".join(json.dumps(record) + "\n" for _, _, record in rows)
        (self.run_dir / METRICS_FILE).write_text(text, encoding="utf-8")

    def _tensorboard(self, stage: Stage, records: list[dict[str, Any]], purge_from: int | None) -> None:
        if not records:
            return
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(self.run_dir / "tb" / stage.label), purge_step=purge_from)
        try:
            for record in records:
                for key, value in record.items():
                    if key in ("step", "stage", "stage_step") or not isinstance(value, (int, float)):
                        continue
                    tag = key if "/" in key else f"train/{key}"
                    writer.add_scalar(tag, value, record["step"])
        finally:
            writer.close()


# ---------------------------------------------------------------------------- summary


def _domains(evals: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for record in evals:
        for key in record:
            if key.startswith("heldout/") and key.endswith("/loss"):
                name = key[len("heldout/") : -len("/loss")]
                if name not in names:
                    names.append(name)
    return names


def summarize(run_dir: Path, stages: list[Stage]) -> dict[str, Any]:
    """Before/after per held-out domain (the first stage's start vs the last stage's end),
    and per stage: steps, last training loss, and per domain its start, peak (the
    stability gap: how far the loss rose after the stage began), end."""
    from mmpretrain.train.metrics import read_metrics

    evals = read_jsonl(run_dir / EVAL_FILE)
    domains = _domains(evals)
    by_stage = {
        s.name: sorted((r for r in evals if r["stage"] == s.name), key=lambda r: r["stage_step"])
        for s in stages
    }
    summary: dict[str, Any] = {"stages": {}, "domains": {}, "tasks": {}}
    for stage in stages:
        records = by_stage[stage.name]
        train = read_metrics(stage.run_dir)
        entry: dict[str, Any] = {
            "steps": stage.config.steps,
            "global_steps": [stage.global_offset, stage.global_offset + stage.config.steps],
            "init": stage.run.train.init_from,
            "final_train_loss": train[-1]["loss"] if train else None,
            "heldout": {},
        }
        for domain in domains:
            values = [r[f"heldout/{domain}/loss"] for r in records if f"heldout/{domain}/loss" in r]
            if values:
                entry["heldout"][domain] = {
                    "start": values[0],
                    "peak": max(values),
                    "end": values[-1],
                    "gap": max(values) - values[0],
                }
        summary["stages"][stage.name] = entry
    first, last = by_stage[stages[0].name], by_stage[stages[-1].name]
    before = first[0] if first and first[0]["stage_step"] == 0 else None
    after = last[-1] if last and last[-1]["stage_step"] == stages[-1].config.steps else None
    for domain in domains:
        key = f"heldout/{domain}/loss"
        b = before.get(key) if before else None
        a = after.get(key) if after else None
        summary["domains"][domain] = {
            "before": b,
            "after": a,
            "change": a - b if a is not None and b is not None else None,
            "ppl_before": math.exp(min(b, 50.0)) if b is not None else None,
            "ppl_after": math.exp(min(a, 50.0)) if a is not None else None,
        }
    for key in sorted({k for r in evals for k in r if k.startswith("eval/")}):
        summary["tasks"][key] = {
            "before": before.get(key) if before else None,
            "after": after.get(key) if after else None,
        }
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:{fmt}}"


def format_summary(summary: dict[str, Any]) -> str:
    """The printed table: per domain before/after/change, then per stage."""
    lines = []
    if summary["domains"]:
        lines.append("held-out loss (nats; perplexity)  before -> after of the recipe")
        width = max(len(d) for d in summary["domains"]) + 2
        for domain, d in summary["domains"].items():
            change = d["change"]
            sign = "" if change is None else ("+" if change >= 0 else "")
            lines.append(
                f"  {domain:<{width}} {_num(d['before'])} ({_num(d['ppl_before'], '.1f')}) -> "
                f"{_num(d['after'])} ({_num(d['ppl_after'], '.1f')})   change {sign}{_num(change)}"
            )
    for key, t in summary["tasks"].items():
        lines.append(f"  {key}: {_num(t['before'])} -> {_num(t['after'])}")
    lines.append("stages (held-out per domain: start / peak / end)")
    for name, s in summary["stages"].items():
        heldout = "  ".join(
            f"{d} {_num(h['start'])}/{_num(h['peak'])}/{_num(h['end'])}" for d, h in s["heldout"].items()
        )
        steps = f"steps {s['global_steps'][0]}-{s['global_steps'][1]}"
        lines.append(f"  {name:<14} {steps:<16} train loss {_num(s['final_train_loss'])}  {heldout}".rstrip())
    return "\n".join(lines)
