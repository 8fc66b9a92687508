"""A continual pre-training recipe: a base run config plus ordered stages.

A recipe YAML is an ordinary run config (``model``, ``data``, ``train``, ``optim``,
``distributed``; ``base:`` inheritance and ``--set`` overrides work as everywhere) with
``stages`` (a mapping, in order: stage name -> :class:`StageConfig`) and optionally
``monitor`` (held-out domains evaluated every N steps) and ``description``. Stages are a
mapping so that ``--set stages.cooldown.steps=500`` and derived files can address them.

Each stage resolves to a complete :class:`RunConfig` (the base with the stage's changes,
``train.max_steps = steps``, ``train.init_from`` = where the stage starts), validated
when the recipe is loaded, so a wrong key in any stage fails before any work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from mmpretrain.config import (
    ConfigModel,
    apply_overrides,
    deep_merge,
    load_yaml_with_bases,
    resolve_config_path,
    validate_config,
)
from mmpretrain.data.data_config import DataConfig
from mmpretrain.errors import ConfigError
from mmpretrain.run_config import RunConfig

RECIPE_KEYS = ("description", "stages", "monitor")
"""Top-level keys of a recipe that are not sections of the base run config."""
PREVIOUS, NONE = "previous", "none"


class StageInit(ConfigModel):
    """Where a stage's model starts."""

    source: str = PREVIOUS
    """`previous`: the final checkpoint of the stage before (the first stage: the base
    config's train.init_from, else a fresh init); a stage name: that earlier stage's final
    checkpoint, or its checkpoint at `step` (a branch); `none`: a fresh init; anything else:
    a path (run directory, checkpoint, `mmpt export` or transformers model directory)."""
    step: int | None = Field(None, gt=0)
    """With a stage name as source: branch from its checkpoint after this many of its steps
    (the runner stops there and keeps that checkpoint), e.g. a WSD cooldown from the stable phase."""
    load: Literal["weights", "weights+optimizer"] = "weights"
    """What to take from the source: model weights only (a fresh optimizer), or the Adam
    state too for every parameter it trained (optim.load_init_state)."""


class StageConfig(ConfigModel):
    """One stage: its step budget, start, trainable parts, data mix and schedule."""

    steps: int = Field(gt=0)
    """Optimizer steps of the stage (its train.max_steps: the stage's schedule spans them)."""
    description: str = ""
    """What the stage is for (shown in the stage table)."""
    skip: bool = False
    """Leave the stage out (e.g. `--set stages.text.skip=true` when starting from your own
    LLM via train.init_from); later stages starting from it start where it would have."""
    init: StageInit = StageInit()
    """Where the stage's model starts (default: the previous stage's final checkpoint)."""
    trainable: dict[str, bool] | None = None
    """The stage's model.trainable map (replaces the base's): e.g. {llm: false, encoders:
    false} for connector-only alignment."""
    mix: dict[str, float] | None = None
    """Mixing weights by data.shards.mix source name: the stage reads exactly these sources
    (others are left out), e.g. {captions: 0.9, replay: 0.1}."""
    upsample: dict[str, float] = Field(default_factory=dict)
    """Multiply these sources' weights (after `mix`), e.g. {hq: 4} in a final phase."""
    optim: dict[str, Any] = Field(default_factory=dict)
    """Changes to the base optim section (lr, schedule, warmup_steps, lr_multipliers, ...)."""
    train: dict[str, Any] = Field(default_factory=dict)
    """Changes to the base train section (batch_size, seq_len, save_every, seed, ...);
    max_steps is `steps`, init_from comes from `init`."""
    data: dict[str, Any] = Field(default_factory=dict)
    """Changes to the base data section (merged key by key; lists are replaced)."""
    model: dict[str, Any] = Field(default_factory=dict)
    """Changes to the base model section (e.g. kernels for a BitNet transition)."""

    @model_validator(mode="after")
    def _check(self) -> StageConfig:
        for key in ("max_steps", "init_from", "stop_after_steps"):
            if key in self.train:
                raise ValueError(f"train.{key} is set by the runner (use `steps` / `init`), not in a stage")
        if "load_init_state" in self.optim:
            raise ValueError("optim.load_init_state is set by init.load, not in a stage")
        bad = {k: v for k, v in {**(self.mix or {}), **self.upsample}.items() if not v > 0}
        if bad:
            raise ValueError(f"mix weights and upsample factors must be > 0, got {bad}")
        return self


class TaskRef(ConfigModel):
    """A few-shot task with overrides of its config (as `mmpt eval --task NAME --set ...`)."""

    task: str
    """Task name or task file."""
    set: list[str] = Field(default_factory=list)
    """KEY=VALUE overrides of the task's config (e.g. heldout=runs/demo-data/heldout)."""


class MonitorConfig(ConfigModel):
    """Forgetting and stability-gap monitoring: held-out domains evaluated during every stage."""

    every: int = Field(50, gt=0)
    """Evaluate every this many steps of each stage (and at its start and end)."""
    domains: dict[str, DataConfig] = Field(default_factory=dict)
    """Held-out sets by name, each a data section: text `sources` (e.g. {format: shakespeare,
    split: heldout}) or `shards` (e.g. the demo data's heldout/); the run's tokenizer is used."""
    max_batches: int = Field(8, gt=0)
    """Packed batches per domain and evaluation (the same ones every time: seed 0)."""
    batch_size: int | None = Field(None, gt=0)
    """Rows per batch (None: the stage's train.batch_size)."""
    tasks: list[str | TaskRef] = Field(default_factory=list)
    """Few-shot tasks scored at each evaluation: names or task files (`mmpt list tasks`),
    or {task: NAME, set: [KEY=VALUE, ...]} with task-config overrides (e.g. heldout=DIR)."""
    shots: list[int] = Field(default_factory=lambda: [0])
    """Shot counts of the few-shot tasks."""
    limit: int = Field(32, gt=0)
    """Queries per few-shot task and evaluation."""

    @model_validator(mode="after")
    def _check(self) -> MonitorConfig:
        if not self.domains and not self.tasks:
            raise ValueError("monitor needs held-out domains or tasks (or leave monitor out)")
        return self


class RecipeConfig(ConfigModel):
    """The recipe part of a recipe YAML (the rest is the base run config)."""

    description: str = ""
    """What the recipe does (`mmpt list recipes` shows the file's first comment line)."""
    stages: dict[str, StageConfig] = Field(min_length=1)
    """Stages in order, by name (letters, digits, `_`, `-`)."""
    monitor: MonitorConfig | None = None
    """Held-out evaluation during the stages (None: none)."""

    @model_validator(mode="after")
    def _check(self) -> RecipeConfig:
        names = list(self.stages)
        for index, (name, stage) in enumerate(self.stages.items()):
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"stage name {name!r}: use letters, digits, `_` and `-`")
            source = stage.init.source
            if source in names:
                if names.index(source) >= index:
                    raise ValueError(f"stage {name!r} starts from {source!r}, which is not an earlier stage")
                if self.stages[source].skip and not stage.skip:
                    raise ValueError(f"stage {name!r} starts from {source!r}, which is skipped")
                limit = self.stages[source].steps
                if stage.init.step is not None and stage.init.step > limit:
                    raise ValueError(
                        f"stage {name!r}: init.step {stage.init.step} > {source!r}'s {limit} steps"
                    )
            elif stage.init.step is not None:
                raise ValueError(f"stage {name!r}: init.step needs init.source to name an earlier stage")
        if all(stage.skip for stage in self.stages.values()):
            raise ValueError("every stage is skipped")
        return self


@dataclass(frozen=True)
class Stage:
    """A resolved stage: its position, run directory, run config and where it starts."""

    index: int
    name: str
    config: StageConfig
    run: RunConfig
    run_dir: Path
    init_stage: str | None  # the stage it starts from (None: an outside source or a fresh init)
    init_step: int | None  # that stage's step it starts from
    global_offset: int  # steps before this stage on its path from the recipe's start

    @property
    def label(self) -> str:
        """``NN-name``: the stage's directory name."""
        return self.run_dir.name


@dataclass(frozen=True)
class Recipe:
    """A loaded recipe: the validated recipe part, the base run config data and its source."""

    config: RecipeConfig
    base: dict[str, Any]
    source: str

    def stages(self, run_dir: Path) -> list[Stage]:
        """Every stage that is not skipped, resolved for a recipe run in ``run_dir``."""
        return resolve_stages(self, run_dir)

    def data(self) -> dict[str, Any]:
        """The whole recipe as plain data (``RUN_DIR/recipe.yaml``)."""
        return {**self.base, **self.config.model_dump(mode="json", exclude_defaults=False)}


def stage_dir(run_dir: Path, index: int, name: str) -> Path:
    """``RUN_DIR/stages/NN-name``."""
    return run_dir / "stages" / f"{index:02d}-{name}"


def checkpoint_path(directory: Path, step: int, kept: bool = False) -> Path:
    """A stage's final checkpoint (``checkpoints/step_N``) or a kept branch point (``kept/step_N``)."""
    return directory / ("kept" if kept else "checkpoints") / f"step_{step:07d}"


def _mixed(data: dict[str, Any], stage: StageConfig, where: str) -> dict[str, Any]:
    """``data`` with the stage's mixing weights applied to data.shards.mix."""
    if stage.mix is None and not stage.upsample:
        return data
    shards = (data.get("shards") or {}) if isinstance(data, dict) else {}
    sources = shards.get("mix") if isinstance(shards, dict) else None
    if not isinstance(sources, list) or not sources:
        raise ConfigError(f"{where}: `mix`/`upsample` need data.shards.mix sources in the base config")
    names = [s.get("name") for s in sources if isinstance(s, dict)]
    unknown = sorted(set(stage.mix or {}) - set(names)) + sorted(set(stage.upsample) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown mix sources {unknown}; data.shards.mix has {names}")
    chosen = []
    for source in sources:
        name = source.get("name")
        if stage.mix is not None and name not in stage.mix:
            continue
        weight = stage.mix[name] if stage.mix is not None else source.get("weight")
        if name in stage.upsample:
            if weight is None:
                raise ConfigError(f"{where}: upsample {name!r} needs weights on the mix sources")
            weight = weight * stage.upsample[name]
        chosen.append({**source, "weight": weight})
    return {**data, "shards": {**shards, "mix": chosen}}


def stage_run_data(
    recipe: Recipe, name: str, init_from: str | None, load_state: bool, seed_offset: int
) -> dict:
    """The run config data of stage ``name`` (before validation)."""
    stage = recipe.config.stages[name]
    where = f"{recipe.source} (stage {name!r})"
    data = deep_merge(recipe.base, {})
    for section in ("model", "data"):
        change = getattr(stage, section)
        if change:
            data[section] = deep_merge(data.get(section) or {}, change)
    if stage.trainable is not None:
        data["model"] = {**(data.get("model") or {}), "trainable": dict(stage.trainable)}
    if isinstance(data.get("data"), dict):
        data["data"] = _mixed(data["data"], stage, where)
    train = deep_merge(data.get("train") or {}, stage.train)
    train.pop("stop_after_steps", None)
    if "seed" not in stage.train:  # each stage draws its own data order unless told otherwise
        train["seed"] = int(train.get("seed", 0)) + seed_offset
    train["max_steps"] = stage.steps
    train["init_from"] = init_from
    data["train"] = train
    data["optim"] = {**deep_merge(data.get("optim") or {}, stage.optim), "load_init_state": load_state}
    return data


def resolve_stages(recipe: Recipe, run_dir: Path) -> list[Stage]:
    """Resolve every stage that is not skipped: its run directory, where it starts, its
    validated run config and its global step offset."""
    stages: dict[str, Stage] = {}
    active = [(i, n, s) for i, (n, s) in enumerate(recipe.config.stages.items()) if not s.skip]
    base_init = (recipe.base.get("train") or {}).get("init_from")
    for position, (index, name, stage) in enumerate(active):
        source, step = stage.init.source, stage.init.step
        init_stage: str | None = None
        if source == PREVIOUS:
            init_stage = active[position - 1][1] if position else None
            init_from = None if position else base_init
        elif source == NONE:
            init_from = None
        elif source in recipe.config.stages:
            init_stage = source
        else:
            init_from = source
        offset = 0
        if init_stage is not None:
            parent = stages[init_stage]
            step = step if step is not None else parent.config.steps
            kept = step != parent.config.steps
            init_from = str(checkpoint_path(parent.run_dir, step, kept))
            offset = parent.global_offset + step
        load_state = stage.init.load == "weights+optimizer"
        data = stage_run_data(recipe, name, init_from, load_state, index)
        run = validate_config(RunConfig, data, f"{recipe.source} (stage {name!r})")
        if load_state and init_from is None:
            raise ConfigError(f"{recipe.source} (stage {name!r}): init.load weights+optimizer needs a source")
        directory = stage_dir(run_dir, index, name)
        stages[name] = Stage(index, name, stage, run, directory, init_stage, step, offset)
    return list(stages.values())


def branch_points(stages: Sequence[Stage]) -> dict[str, set[int]]:
    """For each stage, the steps (before its last) that later stages branch from."""
    points: dict[str, set[int]] = {s.name: set() for s in stages}
    by_name = {s.name: s for s in stages}
    for stage in stages:
        parent = by_name.get(stage.init_stage or "")
        if parent is not None and stage.init_step is not None and stage.init_step < parent.config.steps:
            points[parent.name].add(stage.init_step)
    return points


def split_recipe(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(recipe keys, base run config) of a recipe file's data."""
    recipe = {k: data[k] for k in RECIPE_KEYS if k in data}
    base = {k: v for k, v in data.items() if k not in RECIPE_KEYS}
    return recipe, base


def is_recipe_data(data: dict[str, Any]) -> bool:
    """Whether config data is a recipe (it has ``stages``)."""
    return "stages" in data


def load_recipe(name_or_path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Load a recipe by path or shipped name (``recipes/text_cpt``, ``text_cpt``), apply
    ``--set`` overrides (``stages.NAME.KEY=VALUE`` addresses a stage), validate the recipe
    and every stage's resolved run config."""
    path = resolve_config_path(name_or_path)
    data = apply_overrides(load_yaml_with_bases(path), overrides)
    return recipe_from_data(data, str(path), overrides)


def recipe_from_data(data: dict[str, Any], source: str, overrides: Sequence[str] = ()) -> Recipe:
    """A validated :class:`Recipe` from already-loaded data."""
    if not is_recipe_data(data):
        raise ConfigError(f"{source} is not a recipe: it has no `stages`")
    recipe_data, base = split_recipe(data)
    config = validate_config(RecipeConfig, recipe_data, source, overrides)
    recipe = Recipe(config, base, source)
    resolve_stages(recipe, Path("RUN_DIR"))  # every stage's run config validates before any work
    return recipe


def recipe_yaml(recipe: Recipe, stage: str | None = None) -> str:
    """``mmpt config show`` of a recipe: the whole recipe resolved (bases merged, overrides
    applied, defaults filled), or with ``stage`` the run config that stage trains with."""
    from mmpretrain.config import dump_config

    stages = recipe.stages(Path("RUN_DIR"))
    if stage is None:
        return yaml.safe_dump(recipe.data(), sort_keys=False)
    for resolved in stages:
        if resolved.name == stage:
            return dump_config(resolved.run)
    names = ", ".join(s.name for s in stages)
    raise ConfigError(f"{recipe.source}: no stage {stage!r} to show (stages that run: {names})")
