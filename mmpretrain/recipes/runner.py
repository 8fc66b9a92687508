"""Run a recipe: every stage is an ordinary :func:`~mmpretrain.train.loop.train` run in
``RUN_DIR/stages/NN-name/``, started from the checkpoint its ``init`` names.

A stage runs in pieces that end at its evaluation steps and at the steps later stages
branch from (``train.stop_after_steps``, a run-control key: each piece ends with a
checkpoint and the next resumes it exactly, so the losses equal one uninterrupted run's).
After a piece the held-out domains are evaluated on the checkpoint just written, and a
branch point's checkpoint is kept (hard-linked to ``kept/step_N``; ``keep_last`` would
prune it). Resuming a recipe resumes the first stage whose final checkpoint is missing:
finished stages are skipped, a stage with checkpoints continues from its newest one.

``RUN_DIR/recipe.yaml`` holds the resolved recipe, ``eval.jsonl`` / ``metrics.jsonl`` /
``tb/`` the curves (:mod:`mmpretrain.recipes.monitor`), ``stages/NN-name/init_report.json``
what each stage loaded, and ``recipe_summary.json`` the before/after table.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmpretrain.errors import ConfigError, UserError
from mmpretrain.recipes.config import Recipe, Stage, branch_points, checkpoint_path
from mmpretrain.recipes.monitor import RecipeLog, evaluate, format_summary, load_stage_model, summarize

RECIPE_FILE = "recipe.yaml"
INIT_REPORT = "init_report.json"


@dataclass(frozen=True)
class RecipeResult:
    """What a call to :func:`run_recipe` did."""

    run_dir: Path
    stages_run: list[str]
    stopped_by: str | None  # a signal's name if a stage was interrupted
    summary: dict[str, Any] | None


def _committed_step(run_dir: Path) -> int:
    from mmpretrain.train.checkpoint import latest_checkpoint

    checkpoint = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    return int(checkpoint.name.removeprefix("step_")) if checkpoint is not None else 0


def _keep(stage: Stage, step: int) -> None:
    """Keep ``stage``'s checkpoint of ``step`` as ``kept/step_N`` (a branch point)."""
    source, target = checkpoint_path(stage.run_dir, step), checkpoint_path(stage.run_dir, step, kept=True)
    if (target / "COMMITTED").is_file():
        return
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, tmp, copy_function=link)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def _stops(stage: Stage, done: int, every: int | None, branches: set[int]) -> list[int]:
    """The steps after ``done`` where the stage's pieces end."""
    steps = stage.config.steps
    stops = {steps} | {b for b in branches if done < b < steps}
    if every:
        stops |= set(range(every, steps, every))
    return sorted(s for s in stops if s > done)


def _prepare(run_dir: Path, resume: bool, overwrite: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if overwrite:
            shutil.rmtree(run_dir)
        elif not resume:
            raise UserError(
                f"run directory {run_dir} already exists: pass --resume to continue the recipe "
                "or --overwrite to replace it"
            )
    run_dir.mkdir(parents=True, exist_ok=True)


def stage_table(stages: list[Stage]) -> str:
    """The plan printed at the start: per stage its steps, start, trainable parts,
    data mix and schedule."""
    from mmpretrain.train.schedule import describe_schedule

    lines = ["recipe stages:"]
    for stage in stages:
        run = stage.run
        if stage.init_stage is not None:
            start = f"{stage.init_stage}@{stage.init_step}"
        else:
            start = run.train.init_from or "fresh init"
        load = " + optimizer" if run.optim.load_init_state else ""
        frozen = sorted(k for k, v in run.model.trainable.items() if not v)
        mix = run.data.shards.mix if run.data is not None and run.data.shards is not None else []
        mixing = ", ".join(f"{s.name} {s.weight:g}" if s.weight else s.name for s in mix)
        lines.append(f"  {stage.label}: {stage.config.steps} steps from {start}{load}")
        if stage.config.description:
            lines.append(f"      {stage.config.description}")
        lines.append(f"      frozen: {', '.join(frozen) or 'none'}" + (f"; mix: {mixing}" if mixing else ""))
        multipliers = ", ".join(f"{k} x{v:g}" for k, v in run.optim.lr_multipliers.items())
        extra = f"; lr x: {multipliers}" if multipliers else ""
        lines.append(f"      lr: {describe_schedule(run.optim, stage.config.steps)}{extra}")
    return "\n".join(lines)


def run_recipe(
    recipe: Recipe,
    run_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    argv: list[str] | None = None,
) -> RecipeResult:
    """Run (or with ``resume`` continue) every stage of ``recipe`` in ``run_dir``."""
    from mmpretrain.train.loop import train

    _prepare(run_dir, resume, overwrite)
    stages = recipe.stages(run_dir)
    (run_dir / RECIPE_FILE).write_text(yaml.safe_dump(recipe.data(), sort_keys=False), encoding="utf-8")
    monitor = recipe.config.monitor
    log = RecipeLog(run_dir, stages)
    branches = branch_points(stages)
    _progress_line(stage_table(stages))
    ran: list[str] = []
    for stage in stages:
        done = _committed_step(stage.run_dir)
        if done == stage.config.steps and not (monitor and not log.has_eval(stage, done)):
            continue
        if stage.init_stage is not None:
            parent = next(s for s in stages if s.name == stage.init_stage)
            source = Path(stage.run.train.init_from or "")
            if not (source / "COMMITTED").is_file():
                raise UserError(
                    f"stage {stage.label} starts from {source}, which is missing: stage "
                    f"{parent.label} has not reached step {stage.init_step} (or its checkpoint was deleted)"
                )
        _progress_line(f"== stage {stage.label} ({stage.config.steps} steps) ==")
        log.drop_evals_after(stage, done)
        if done == 0:
            if not (stage.run_dir / INIT_REPORT).is_file() or (monitor and not log.has_eval(stage, 0)):
                _start_stage(stage, log, monitor)
        else:
            if done in branches[stage.name]:  # (a crash right after the piece that reached it)
                _keep(stage, done)
            if (
                monitor
                and not log.has_eval(stage, done)
                and (done % monitor.every == 0 or done == stage.config.steps)
            ):
                _evaluate(stage, done, log, monitor)
        ran.append(stage.name)
        train_cfg = _train_section(stage, done)
        for stop in _stops(stage, done, monitor.every if monitor else None, branches[stage.name]):
            run = stage.run.model_copy(
                update={"train": train_cfg.model_copy(update={"stop_after_steps": stop - done})}
            )
            result = train(run, stage.run_dir, resume=True, argv=argv)
            log.sync_training(stage, done)
            if result.stopped_by is not None:
                print(
                    f"recipe stopped in stage {stage.label} at step {result.end_step} ({result.stopped_by}); "
                    "continue with the same command and --resume",
                    flush=True,
                )
                return RecipeResult(run_dir, ran, result.stopped_by, None)
            done = result.end_step
            if done in branches[stage.name]:
                _keep(stage, done)
            if monitor and (done % monitor.every == 0 or done == stage.config.steps):
                _evaluate(stage, done, log, monitor)
    log.write_metrics()
    summary = summarize(run_dir, stages)
    print(format_summary(summary), flush=True)
    return RecipeResult(run_dir, ran, None, summary)


def _progress_line(text: str) -> None:
    """A line of the run's log on stdout, like the training steps (none under --quiet)."""
    from mmpretrain import terminal

    if terminal.log_lines_wanted():
        print(text, flush=True)


def _train_section(stage: Stage, done: int) -> Any:
    """The stage's train section; once it has a checkpoint, with the init_from it was
    started with (not read on resume): a recipe directory that moved still resumes."""
    saved = stage.run_dir / "config.yaml"
    if done == 0 or not saved.is_file():
        return stage.run.train
    started = (yaml.safe_load(saved.read_text(encoding="utf-8")).get("train") or {}).get("init_from")
    return stage.run.train.model_copy(update={"init_from": started})


def _start_stage(stage: Stage, log: RecipeLog, monitor: Any) -> None:
    """Before a stage's first step: write its init report and evaluate its start."""
    if not monitor and stage.run.train.init_from is None:  # a fresh init: nothing to load or score
        stage.run_dir.mkdir(parents=True, exist_ok=True)
        (stage.run_dir / INIT_REPORT).write_text(json.dumps({"source": None, "kind": "fresh init"}) + "\n")
        return
    loaded, report = load_stage_model(stage, None)  # (the loop prints the report when it starts)
    if report is None:
        data: dict[str, Any] = {"source": None, "kind": "fresh init", "load": None}
    else:
        data = {
            **report.as_dict(),
            "load": "weights+optimizer" if stage.run.optim.load_init_state else "weights",
        }
    (stage.run_dir / INIT_REPORT).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if monitor and not log.has_eval(stage, 0):
        _record(stage, 0, log, evaluate(loaded, monitor))


def _evaluate(stage: Stage, step: int, log: RecipeLog, monitor: Any) -> None:
    from mmpretrain.train.checkpoint import latest_checkpoint

    checkpoint = latest_checkpoint(stage.run_dir)
    if checkpoint is None or checkpoint.name != f"step_{step:07d}":
        return  # (that checkpoint is gone; the evaluation is skipped rather than faked)
    loaded, _ = load_stage_model(stage, checkpoint)
    _record(stage, step, log, evaluate(loaded, monitor))


def _record(stage: Stage, step: int, log: RecipeLog, values: dict[str, float]) -> None:
    record = log.add_eval(stage, step, values)
    shown = "  ".join(
        f"{k.removeprefix('heldout/')} {v:.4f}" for k, v in values.items() if k.endswith("/loss")
    )
    shown += "".join(f"  {k} {v:.3f}" for k, v in values.items() if k.startswith("eval/"))
    _progress_line(f"eval {stage.label} step {step} (global {record['step']}): {shown}")


def recipe_command(args: Any) -> int:
    """``mmpt train RECIPE.yaml [--run-dir DIR] [--set KEY=VALUE] [--resume|--overwrite]``."""
    from mmpretrain.recipes.config import load_recipe

    recipe = load_recipe(args.config, args.set)  # every stage validates before any work
    if getattr(args, "nproc", 1) != 1:
        raise ConfigError("`mmpt train RECIPE --nproc` is not supported yet: run the recipe in one process")
    run_dir = Path(args.run_dir or Path("runs") / Path(str(args.config)).stem)
    result = run_recipe(
        recipe, run_dir, resume=args.resume, overwrite=args.overwrite, argv=["mmpt", *sys.argv[1:]]
    )
    if result.stopped_by is None:
        print(f"recipe finished: run directory {run_dir} (summary in {run_dir / 'recipe_summary.json'})")
    return 0
