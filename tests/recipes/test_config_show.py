"""`mmpt config show` on recipes: the whole recipe, or one stage's run config."""

from __future__ import annotations

import pytest
import yaml

from mmpretrain.cli import main


def test_config_show_prints_a_recipe_resolved(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "recipes/vlm_llava", "--set", "stages.full.steps=7"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert list(shown["stages"]) == ["llm", "align", "full"]
    assert shown["stages"]["full"]["steps"] == 7
    assert shown["model"]["encoders"]["vision"]["name"] == "hf_siglip"


def test_config_show_prints_one_stage_run_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "recipes/vlm_llava", "--stage", "align"]) == 0
    run = yaml.safe_load(capsys.readouterr().out)
    assert run["train"]["max_steps"] == 100
    assert run["model"]["trainable"] == {"llm": False, "encoders": False, "connectors": True}
    assert "stages" not in run


def test_config_show_names_the_stages_when_one_is_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "recipes/vlm_llava", "--stage", "nope"]) == 2
    assert "stages that run: llm, align, full" in capsys.readouterr().err


def test_config_show_stage_of_a_plain_config_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "tiny", "--stage", "full"]) == 2
    assert "is not a recipe" in capsys.readouterr().err
