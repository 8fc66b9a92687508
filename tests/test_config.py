"""Config system: typed YAML with bases and overrides; errors name the key and exit 2."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from mmpretrain.cli import main
from mmpretrain.config import (
    apply_overrides,
    dump_config,
    load_config,
    load_yaml_with_bases,
    resolve_config_path,
    shipped_config_names,
    shipped_configs_dir,
    validate_config,
)
from mmpretrain.data.data_config import DataConfig
from mmpretrain.encoders.speech_units import SpeechUnitsConfig
from mmpretrain.errors import ConfigError
from mmpretrain.run_config import RunConfig
from mmpretrain.vq_train import VqTrainConfig

# Update when a config is added or removed under configs/ (the count is the point).
EXPECTED_SHIPPED_CONFIGS = 25

# Schema of the shipped media tokenizer configs (configs/tokenizers/KIND_*.yaml), by kind.
TOKENIZER_SCHEMAS: dict[str, type] = {"speech_units": SpeechUnitsConfig, "vq": VqTrainConfig}

MINIMAL = {"model": {"llm": {"name": "llama", "hidden_size": 32, "num_heads": 4}}}


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_shipped_yaml_validates() -> None:
    names = shipped_config_names()
    files = sorted(shipped_configs_dir().rglob("*.yaml"))
    assert len(names) == len(files) == EXPECTED_SHIPPED_CONFIGS, names
    for name in names:
        if name.startswith("data/"):  # data fragments that run configs name in `base:`
            data = load_yaml_with_bases(resolve_config_path(name))
            assert set(data) == {"data"}, name
            assert isinstance(validate_config(DataConfig, data["data"], name), DataConfig)
            continue
        if name.startswith("recipes/"):  # a base run config + stages; every stage's run config validates
            from mmpretrain.recipes.config import load_recipe

            assert load_recipe(name).config.stages, name
            continue
        if name.startswith("tokenizers/"):  # `mmpt tokenizer train --config`, schema by kind
            kind = next(k for k in TOKENIZER_SCHEMAS if name.removeprefix("tokenizers/").startswith(k + "_"))
            data = load_yaml_with_bases(resolve_config_path(name))
            assert isinstance(validate_config(TOKENIZER_SCHEMAS[kind], data, name), TOKENIZER_SCHEMAS[kind])
            continue
        config = load_config(name)
        assert isinstance(config, RunConfig)
        assert config.model.llm.name in {"llama", "qwen2", "qwen3", "mistral", "gemma"}


def test_base_inheritance_merges_sections(tmp_path: Path) -> None:
    base = write_yaml(tmp_path / "base.yaml", {**MINIMAL, "train": {"max_steps": 7, "seq_len": 64}})
    child = write_yaml(tmp_path / "child.yaml", {"base": base.name, "train": {"seq_len": 32}})
    config = load_config(child)
    assert config.train.max_steps == 7  # from base
    assert config.train.seq_len == 32  # child wins
    assert config.model.llm.hidden_size == 32


def test_base_can_name_a_shipped_config(tmp_path: Path) -> None:
    child = write_yaml(tmp_path / "child.yaml", {"base": "text/tiny", "optim": {"lr": 0.5}})
    config = load_config(child)
    assert config.optim.lr == 0.5
    assert config.train.max_steps == load_config("tiny").train.max_steps


def test_shipped_name_resolution() -> None:
    assert resolve_config_path("tiny") == resolve_config_path("text/tiny.yaml")
    with pytest.raises(ConfigError, match="neither a file nor a shipped config"):
        resolve_config_path("no_such_config")


def test_overrides_are_typed_by_the_schema() -> None:
    config = load_config("tiny", ["optim.lr=3e-4", "train.max_steps=9", "optim.betas=[0.8, 0.9]"])
    assert config.optim.lr == pytest.approx(3e-4) and isinstance(config.optim.lr, float)
    assert config.train.max_steps == 9
    assert config.optim.betas == (0.8, 0.9)


def test_configs_are_frozen() -> None:
    config = load_config("tiny")
    with pytest.raises(pydantic.ValidationError):
        config.train.max_steps = 3  # type: ignore[misc]


def test_dump_round_trips(tmp_path: Path) -> None:
    config = load_config("tiny", ["train.seed=5"])
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(dump_config(config), encoding="utf-8")
    assert load_config(dumped) == config


def test_unknown_key_in_file_names_key_and_allowed_keys(tmp_path: Path) -> None:
    bad = write_yaml(tmp_path / "bad.yaml", {**MINIMAL, "train": {"max_stesp": 3}})
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    message = str(info.value)
    assert "train.max_stesp: unknown key" in message
    assert "max_steps" in message and "did you mean 'max_steps'" in message
    assert str(bad) in message


def test_unknown_key_inside_registry_union_names_user_path(tmp_path: Path) -> None:
    bad = write_yaml(tmp_path / "bad.yaml", {"model": {"llm": {"name": "mistral", "hidden_sise": 3}}})
    with pytest.raises(ConfigError, match=r"model\.llm\.hidden_sise: unknown key.*sliding_window"):
        load_config(bad)


def test_wrong_type_names_key(tmp_path: Path) -> None:
    bad = write_yaml(tmp_path / "bad.yaml", {**MINIMAL, "train": {"batch_size": "many"}})
    with pytest.raises(ConfigError, match=r"train\.batch_size: Input should be a valid integer"):
        load_config(bad)


def test_wrong_literal_lists_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"train\.precision: Input should be 'fp32' or 'bf16'"):
        load_config("tiny", ["train.precision=fp16"])


def test_unknown_component_name_lists_registered_names() -> None:
    with pytest.raises(ConfigError, match=r"model\.llm\.name: 'gpt9' is not registered; allowed: .*'llama'"):
        load_config("tiny", ["model.llm.name=gpt9"])


def test_cross_field_check_names_section() -> None:
    with pytest.raises(ConfigError, match=r"model\.llm: Value error, hidden_size 192 is not divisible"):
        load_config("tiny", ["model.llm.num_heads=5", "model.llm.num_kv_heads=1"])


def test_bad_base_path_names_file(tmp_path: Path) -> None:
    bad = write_yaml(tmp_path / "bad.yaml", {"base": "missing_base.yaml", **MINIMAL})
    with pytest.raises(ConfigError, match=r"base 'missing_base.yaml' not found"):
        load_config(bad)


def test_base_cycle_is_reported(tmp_path: Path) -> None:
    write_yaml(tmp_path / "a.yaml", {"base": "b.yaml"})
    write_yaml(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="config base cycle"):
        load_config(tmp_path / "a.yaml")


def test_invalid_yaml_and_non_mapping(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.max_steps", "expected KEY=VALUE"),
        ("=3", "expected KEY=VALUE"),
        ("train.max_steps.deeper=1", "train.max_steps is a value, not a section"),
        ("train.nope=1", r"train\.nope: unknown key.*\(from --set train\.nope=1\)"),
        ("train.max_steps=-1", r"train\.max_steps: Input should be greater than 0 \(from --set"),
    ],
)
def test_bad_overrides(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config("tiny", [override])


def test_apply_overrides_does_not_mutate_input() -> None:
    data = {"train": {"seed": 1}}
    assert apply_overrides(data, ["train.seed=2", "optim.lr=0.1"]) == {
        "train": {"seed": 2},
        "optim": {"lr": 0.1},
    }
    assert data == {"train": {"seed": 1}}


@pytest.mark.parametrize(
    "argv",
    [
        ["config", "show", "tiny", "--set", "train.max_stesp=3"],
        ["config", "show", "tiny", "--set", "train.batch_size=x"],
        ["config", "show", "tiny", "--set", "nokey"],
        ["config", "show", "missing.yaml"],
        ["train", "tiny", "--set", "optim.lr=-1"],
    ],
)
def test_cli_config_errors_exit_2_with_one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_cli_config_show_prints_resolved_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "config", "show", "tiny", "--set", "train.seed=11")
    assert code == 0
    assert yaml.safe_load(out)["train"]["seed"] == 11


def test_cli_config_schema_lists_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "config", "schema")
    assert code == 0
    for key in (
        "train.max_steps",
        "train.stop_after_steps",
        "optim.lr",
        "distributed.backend",
        "model.llm[llama].hidden_size",
        "model.llm[mistral].sliding_window",
    ):
        assert key in out, key
    assert "Optimizer steps of the whole run" in out  # descriptions come from field docstrings
    code, out, _ = run_cli(capsys, "config", "schema", "optim")
    assert code == 0 and "optim.lr" in out and "train.max_steps" not in out
    code, _, err = run_cli(capsys, "config", "schema", "nosuch")
    assert code == 2 and "sections: data, distributed, model, optim, train" in err
