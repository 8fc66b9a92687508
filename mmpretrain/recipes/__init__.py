"""Continual pre-training recipes: a base run config plus stages (README "Continual
pre-training recipes"). ``mmpt train configs/recipes/NAME.yaml`` (or ``mmpt train NAME``)
runs one; ``mmpt list recipes`` lists the shipped ones, registered here by file name.

Importing this module is cheap: it only lists the shipped YAML files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmpretrain.registry import RECIPES

RECIPES_DIR = "recipes"


def _first_comment(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def _loader(name: str, summary: str) -> Callable[..., Any]:
    def load(overrides: tuple[str, ...] = ()) -> Any:
        from mmpretrain.recipes.config import load_recipe

        return load_recipe(f"{RECIPES_DIR}/{name}", overrides)

    load.__doc__ = summary
    load.__module__ = __name__
    return load


def register_shipped_recipes() -> None:
    """Register every ``configs/recipes/*.yaml`` under its file name (once)."""
    from mmpretrain.config import shipped_configs_dir

    for path in sorted((shipped_configs_dir() / RECIPES_DIR).glob("*.yaml")):
        if path.stem not in RECIPES._entries:
            RECIPES.add(path.stem, _loader(path.stem, _first_comment(path)))


def is_recipe(name_or_path: Any) -> bool:
    """Whether ``mmpt train NAME_OR_PATH`` names a recipe (a YAML with ``stages``, bases
    merged); False when the file cannot be read (the ordinary config error follows)."""
    from mmpretrain.config import load_yaml_with_bases, resolve_config_path
    from mmpretrain.errors import UserError

    try:
        data = load_yaml_with_bases(resolve_config_path(name_or_path))
    except UserError:
        return False
    return "stages" in data


register_shipped_recipes()


def final_stage_dir(path: Path) -> Path | None:
    """The run directory of a recipe run's last stage that has a committed checkpoint
    (``RUN_DIR/stages/NN-name``, highest NN), or None when ``path`` is not a recipe run
    (``recipe.yaml`` + ``stages/``). Eval and export take it for the recipe run."""
    if not ((path / "recipe.yaml").is_file() and (path / "stages").is_dir()):
        return None
    for stage in sorted((path / "stages").iterdir(), reverse=True):
        if stage.is_dir() and any((stage / "checkpoints").glob("step_*/COMMITTED")):
            return stage
    return None
