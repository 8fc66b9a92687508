"""Recipe files: every shipped one validates (each stage's resolved run config too), stages
are addressable with --set, and mistakes fail before any work, naming the stage and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmpretrain.cli import main
from mmpretrain.config import shipped_config_names
from mmpretrain.errors import ConfigError
from mmpretrain.recipes import is_recipe
from mmpretrain.recipes.config import branch_points, load_recipe, recipe_from_data
from mmpretrain.registry import RECIPES

SHIPPED = sorted(n.removeprefix("recipes/") for n in shipped_config_names() if n.startswith("recipes/"))


def test_at_least_five_recipes_ship_and_are_registered(capsys: pytest.CaptureFixture[str]) -> None:
    assert {"text_cpt", "vlm_llava", "speech_lm", "omni_cpt", "wsd_cooldown", "bitnet_transition"} <= set(
        SHIPPED
    )
    assert set(RECIPES.names()) >= set(SHIPPED)
    assert main(["list", "recipes"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_validates_with_every_stage(name: str, tmp_path: Path) -> None:
    recipe = RECIPES.get(name).builder()
    assert is_recipe(f"recipes/{name}") and not is_recipe("text/tiny")
    stages = recipe.stages(tmp_path)
    assert stages and [s.name for s in stages] == list(recipe.config.stages)
    for stage in stages:
        assert stage.run.train.max_steps == stage.config.steps
        assert stage.run.train.stop_after_steps is None
        assert stage.run_dir == tmp_path / "stages" / f"{stage.index:02d}-{stage.name}"


def test_stages_resolve_their_start_seed_mix_and_offsets(tmp_path: Path) -> None:
    recipe = load_recipe("omni_cpt", ["stages.full.steps=40", "train.seed=7"])
    stages = {s.name: s for s in recipe.stages(tmp_path)}
    assert stages["llm"].run.train.init_from is None and stages["llm"].run.train.seed == 7
    assert stages["align"].run.train.init_from == str(tmp_path / "stages/00-llm/checkpoints/step_0000200")
    assert stages["full"].run.train.seed == 9 and stages["full"].run.train.max_steps == 40
    assert [s.global_offset for s in stages.values()] == [0, 200, 300, 340]
    align = stages["align"].run
    assert align.model.trainable == {"llm": False, "encoders": False, "connectors": True}
    assert align.data is not None and align.data.shards is not None
    assert [(s.name, s.weight) for s in align.data.shards.mix] == [("demo", 1.0)]
    cooldown = stages["cooldown"].run
    assert cooldown.data is not None and cooldown.data.shards is not None
    assert [(s.name, s.weight) for s in cooldown.data.shards.mix] == [
        ("demo", pytest.approx(2.55)),
        ("text", 0.15),
    ]
    assert cooldown.optim.load_init_state and cooldown.optim.lr_multipliers == {
        "connectors": 10,
        "encoders": 0.1,
    }
    assert not stages["full"].run.optim.load_init_state


def test_a_branch_starts_from_a_kept_checkpoint(tmp_path: Path) -> None:
    recipe = load_recipe("wsd_cooldown", ["stages.cooldown_mid.init.step=100"])
    stages = recipe.stages(tmp_path)
    mid = next(s for s in stages if s.name == "cooldown_mid")
    assert mid.run.train.init_from == str(tmp_path / "stages/00-stable/kept/step_0000100")
    assert mid.global_offset == 100 and branch_points(stages) == {
        "stable": {100},
        "cooldown_mid": set(),
        "cooldown": set(),
    }


def test_skipping_the_llm_stage_starts_from_train_init_from(tmp_path: Path) -> None:
    recipe = load_recipe("vlm_llava", ["stages.llm.skip=true", "train.init_from=/models/my-llm"])
    stages = recipe.stages(tmp_path)
    assert [s.name for s in stages] == ["align", "full"]
    assert stages[0].run.train.init_from == "/models/my-llm" and stages[0].run_dir.name == "01-align"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stages.cooldown.optim.lr=-1"], r"stage 'cooldown'.*optim\.lr"),
        (["stages.cooldown.stepz=3"], r"stages\.cooldown\.stepz: unknown key"),
        (["stages.stable.init.source=cooldown"], "not an earlier stage"),
        (["stages.cooldown_mid.init.step=999"], "> 'stable'"),
        (["stages.stable.train.max_steps=5"], "set by the runner"),
        (["stages.stable.mix={a: 1}"], "data.shards.mix sources"),
    ],
)
def test_mistakes_fail_before_any_work_naming_stage_and_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_recipe("wsd_cooldown", overrides)


def test_unknown_mix_source_and_not_a_recipe() -> None:
    with pytest.raises(ConfigError, match=r"unknown mix sources \['repla'\]"):
        load_recipe("text_cpt", ["stages.cpt.mix={domain: 1, repla: 1}"])
    with pytest.raises(ConfigError, match="not a recipe"):
        recipe_from_data({"model": {}}, "x.yaml")
