"""`mmpt demo`: the whole mission end to end on this machine, in about ten minutes of CPU.

1. data: the demo shards (drawn shapes with captions and counting questions, interleaved
   documents, espeak-ng speech, text; a held-out split), Shakespeare as text shards, and
   four sources derived from the demo's training shards (:mod:`mmpretrain.demo_sources`);
2. training: the shipped recipe ``configs/recipes/demo.yaml`` (a text LLM, connector
   alignment with the LLM and encoders frozen, then everything on the demo mix with
   Shakespeare replay; packed batches; 2:4-sparse MLPs) with the data paths pointed at
   ``OUT/data``, through the recipe runner (held-out losses at every stage boundary);
3. evaluation: 0- and 4-shot on the built-in demo tasks for the trained model, the same
   model untrained and chance (:mod:`mmpretrain.demo_eval`);
4. export: the native format, and transformers where the model maps (an image+speech
   model does not: the reason is printed);
5. plots (:mod:`mmpretrain.plot`) and ``OUT/summary.json`` with the printed summary.

``--quick`` is the same path at a smaller size: the one end-to-end smoke test of
``make test``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmpretrain.errors import UserError

RECIPE = "recipes/demo"
RECIPE_DATA_ROOT = "runs/demo/data"
"""Where the shipped recipe expects the data (``mmpt demo``'s default ``--out``)."""
MARKER = ".mmpt-demo"
"""Marks a directory as a demo's output, so a later demo may replace it."""


@dataclass(frozen=True)
class Plan:
    """The sizes of one demo run."""

    samples: int
    """Demo samples to draw (a tenth more go to the held-out split)."""
    steps: dict[str, int]
    """Steps per recipe stage."""
    shots: tuple[int, ...] = (0, 4)
    eval_limit: int | None = None
    """Queries per task and shot count (None: the whole held-out split)."""
    tasks: tuple[str, ...] = ("shapes_classify", "shapes_count", "shapes_caption", "shapes_asr")
    overrides: tuple[str, ...] = field(default_factory=tuple)
    """Extra `--set` overrides of the recipe."""


FULL = Plan(samples=2000, steps={"llm": 150, "align": 100, "full": 2500})
QUICK = Plan(
    samples=400,
    steps={"llm": 20, "align": 10, "full": 120},
    shots=(0,),
    tasks=("shapes_classify", "shapes_count"),
    overrides=("monitor.max_batches=1", "train.log_every=10"),
)


class _Phases:
    """Numbered phase headers with their durations."""

    def __init__(self, total: int) -> None:
        self.total, self.number = total, 0
        self.seconds: dict[str, float] = {}
        self._name: str | None = None
        self._started = 0.0

    def start(self, name: str, text: str) -> None:
        self.finish()
        self.number += 1
        self._name, self._started = name, time.perf_counter()
        print(f"\n[{self.number}/{self.total}] {text}", flush=True)

    def finish(self) -> None:
        if self._name is not None:
            self.seconds[self._name] = round(time.perf_counter() - self._started, 1)
            print(f"      ({self._name}: {self.seconds[self._name]:.0f} s)", flush=True)
            self._name = None


def _prepare_out(out: Path) -> None:
    """Replace an earlier demo in ``out``; refuse a non-empty directory that is not one."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise UserError(
                f"--out {out} is not empty and holds no earlier demo ({MARKER}): choose a new "
                "or empty directory"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `mmpt demo`; a later demo with this --out replaces it\n")


def demo_recipe(data_root: Path, plan: Plan) -> Any:
    """The shipped demo recipe with its data under ``data_root`` and the plan's steps."""
    from mmpretrain.config import apply_overrides, load_yaml_with_bases, resolve_config_path
    from mmpretrain.recipes.config import recipe_from_data

    path = resolve_config_path(RECIPE)
    text = json.dumps(load_yaml_with_bases(path)).replace(RECIPE_DATA_ROOT, data_root.as_posix())
    overrides = [f"stages.{name}.steps={steps}" for name, steps in plan.steps.items()] + list(plan.overrides)
    return recipe_from_data(apply_overrides(json.loads(text), overrides), str(path), overrides)


def build_data(data: Path, plan: Plan) -> dict[str, Any]:
    """Every shard directory the recipe reads; returns what was built."""
    from mmpretrain.data.demo_data import build_demo_dataset
    from mmpretrain.demo_sources import build_derived, build_text_shards

    index = build_demo_dataset(data / "demo", samples=plan.samples, shards=4, seed=0, progress=True)
    heldout = index["heldout"]["samples"]
    print(
        f"  demo       {index['samples']:>6,} samples ({index['images']:,} pictures, {index['audio']:,} "
        f"speech clips, {index['audio_seconds']:.0f} s) + {heldout} held-out in {data / 'demo'}",
        flush=True,
    )
    text = build_text_shards(data / "text")
    print(f"  text       {text:>6,} Shakespeare documents (held-out ones left out) in {data / 'text'}")
    derived = build_derived(data / "demo", data)
    return {"demo": index["samples"], "heldout": heldout, "images": index["images"], "audio": index["audio"],
            "text": text, **derived}  # fmt: skip


@contextlib.contextmanager
def _output_to(log: Path | None) -> Iterator[None]:
    """With a log file (--quiet), stdout goes there instead of the terminal."""
    if log is None:
        yield
        return
    with log.open("a", encoding="utf-8") as handle, contextlib.redirect_stdout(handle):
        yield


def run_demo(out: Path, quick: bool, verbosity: int = 0) -> int:
    """Run the demo into ``out``; print the summary and write ``out/summary.json``."""
    from mmpretrain.demo_eval import evaluate_demo
    from mmpretrain.demo_report import export_models, summarize, write_summary
    from mmpretrain.plot import plot_runs
    from mmpretrain.recipes.runner import run_recipe

    started = time.perf_counter()
    plan = QUICK if quick else FULL
    out = Path(out)
    _prepare_out(out)
    log = out / "demo.log" if verbosity < 0 else None
    phases = _Phases(5)
    run_dir, data = out / "train", out / "data"
    with _output_to(log):
        phases.start("data", f"demo data: {plan.samples} samples, Shakespeare text shards, derived sources")
        built = build_data(data, plan)

        recipe = demo_recipe(data, plan)
        steps = " + ".join(f"{n} {s}" for n, s in plan.steps.items())
        phases.start("train", f"training the recipe `{RECIPE}` ({steps} steps) into {run_dir}")
        result = run_recipe(recipe, run_dir, overwrite=True, argv=["mmpt", "demo", *sys.argv[2:]])
        if result.stopped_by is not None:
            print(f"demo stopped by {result.stopped_by}: run it again to start over", file=sys.stderr)
            return 130
        stages = recipe.stages(run_dir)
        final = stages[-1]

        shots = ",".join(str(k) for k in plan.shots)
        phases.start("eval", f"few-shot evaluation ({shots}-shot): trained, untrained, chance")
        from mmpretrain.demo_eval import TASKS

        tasks = {name: TASKS[name] for name in plan.tasks}
        seed = stages[0].run.train.seed
        scores = evaluate_demo(
            final.run_dir, data / "demo" / "heldout", run_dir / "eval", plan.shots, seed, plan.eval_limit,
            tasks=tasks,
        )  # fmt: skip

        phases.start("export", "export: native safetensors, and transformers where the model maps")
        exports = export_models(final.run_dir, out / "export")

        phases.start("plots", f"plots into {run_dir / 'plots'}")
        plots = plot_runs([run_dir], run_dir / "plots")
        for name, path in plots.items():
            print(f"  {name:<11} {path}")
        phases.finish()

    summary = summarize(
        out=out, quick=quick, plan=plan, built=built, stages=stages, recipe_summary=result.summary or {},
        scores=scores, exports=exports, plots=plots, phases=phases.seconds,
        seconds=time.perf_counter() - started, log=log,
    )  # fmt: skip
    print(write_summary(out, summary))
    return 0
