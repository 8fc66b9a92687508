"""Evaluation tasks, registered in the ``tasks`` registry; they read local files only.

Each task is a config class (a :class:`TaskConfig` with ``name: Literal[...]`` and the
paths of the files it reads, each documented) registered with a builder that returns a
:class:`~mmpretrain.eval.types.TaskSpec`::

    class MyTaskConfig(TaskConfig):
        \"\"\"One line for `mmpt list tasks`.\"\"\"
        name: Literal["my_task"] = "my_task"
        path: Path = Path("datasets/my_task/test.jsonl")

    @TASKS.register("my_task", config=MyTaskConfig)
    def build_my_task(cfg: MyTaskConfig) -> TaskSpec: ...

:func:`load_task` turns ``--task NAME_OR_FILE`` (a registered name, or a YAML file with
``name:`` and the task's keys) plus ``KEY=VALUE`` overrides into a built spec. Paths are
read when the spec's ``queries()`` / ``demos()`` are first called; a missing file is a
:class:`~mmpretrain.errors.UserError` naming it and the key that sets it.

Modules: :mod:`.captions` (coco_captions, flickr30k), :mod:`.vqa` (vqav2, okvqa, textvqa,
vizwiz), :mod:`.classification` (hateful_memes, image_folder), :mod:`.speech`
(librispeech, spoken_qa), :mod:`.interleaved` (interleaved_jsonl), :mod:`.demo`
(shapes_classify, shapes_count, shapes_caption, shapes_asr).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmpretrain.config import ComponentConfig, apply_overrides, load_yaml_with_bases, validate_config
from mmpretrain.errors import ConfigError
from mmpretrain.registry import TASKS

from ..types import TaskSpec


class TaskConfig(ComponentConfig):
    """Fields every task has (besides its own file paths)."""

    template: str | None = None
    """Prompt template replacing the default: <image>, <audio>, {question}, {answer} (see PromptTemplate)."""
    max_new_tokens: int | None = None
    """Most tokens generated per query (generation tasks); None: the task's default."""
    max_demos: int | None = None
    """Use only the first N examples of the demonstration split (None: all of it)."""


def task_config(name_or_file: str | Path, overrides: Sequence[str] = ()) -> TaskConfig:
    """The validated config of a task given by registered name or YAML file, with overrides."""
    path = Path(name_or_file)
    data: dict[str, Any]
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"task file not found: {path}")
        data = load_yaml_with_bases(path)
        source = str(path)
        if "name" not in data:
            raise ConfigError(
                f"task file {path} needs a 'name:' key; registered tasks: {', '.join(TASKS.names())}"
            )
    else:
        data = {"name": str(name_or_file)}
        source = f"task {name_or_file}"
    data = apply_overrides(data, overrides)
    entry = TASKS.get(str(data["name"]))  # an unknown name lists the registered ones
    assert entry.config_class is not None
    return validate_config(entry.config_class, data, source, overrides)


def build_task(cfg: TaskConfig) -> TaskSpec:
    """Build the :class:`TaskSpec` of a task config."""
    return TASKS.build(cfg)


def load_task(name_or_file: str | Path, overrides: Sequence[str] = ()) -> TaskSpec:
    """``--task NAME_OR_FILE`` (+ ``KEY=VALUE`` overrides) -> a built task spec."""
    return build_task(task_config(name_or_file, overrides))


# Importing the task modules registers the tasks.
from . import captions, classification, demo, interleaved, speech, vqa  # noqa: E402

__all__ = [
    "TaskConfig",
    "build_task",
    "captions",
    "classification",
    "demo",
    "interleaved",
    "load_task",
    "speech",
    "task_config",
    "vqa",
]
