"""Registries: names, duplicates, plugins through the `mmpretrain.plugins` entry point."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmpretrain import registry
from mmpretrain.cli import main
from mmpretrain.errors import RegistryError
from mmpretrain.registry import LLMS, Registry

PLUGIN_MODULE = textwrap.dedent(
    """
    from typing import Literal
    from mmpretrain.model.llms import CausalLMConfig, build_causal_lm
    from mmpretrain.registry import LLMS, CONNECTORS

    class PluginLMConfig(CausalLMConfig):
        '''A decoder registered by a third-party plugin.'''
        name: Literal["plugin_llama"]

    def build_plugin_lm(cfg):
        return build_causal_lm(cfg.model_copy(update={"name": "llama"}))

    LLMS.add("plugin_llama", build_plugin_lm, config=PluginLMConfig)

    @CONNECTORS.register("plugin_identity")
    class PluginIdentity:
        '''Identity connector from a plugin.'''
    """
)


def make_plugin_distribution(
    root: Path, module: str = PLUGIN_MODULE, target: str = "mmpt_test_plugin"
) -> Path:
    """A minimal installed distribution (dist-info + module) declaring the entry point."""
    (root / "mmpt_test_plugin.py").write_text(module, encoding="utf-8")
    dist_info = root / "mmpt_test_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: mmpt-test-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[mmpretrain.plugins]\ntest_plugin = {target}\n")
    return root


@pytest.fixture
def plugin_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    make_plugin_distribution(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    registry.LLMS.remove("plugin_llama")
    registry.CONNECTORS.remove("plugin_identity")
    sys.modules.pop("mmpt_test_plugin", None)


def test_duplicate_name_is_an_error() -> None:
    reg = Registry("test_duplicates", "test only")
    try:
        reg.register("thing")(lambda cfg: cfg)
        with pytest.raises(RegistryError, match="'thing' is already registered"):
            reg.register("thing")(lambda cfg: cfg)
    finally:
        registry.REGISTRIES.pop("test_duplicates")


def test_duplicate_registry_kind_is_an_error() -> None:
    with pytest.raises(RegistryError, match="already exists"):
        Registry("llms", "again")


def test_unknown_name_lists_registered_names() -> None:
    with pytest.raises(RegistryError, match=r"unknown llms name 'gpt9'; registered: gemma, llama"):
        LLMS.get("gpt9")


def test_builtin_llms_registered_with_config_classes() -> None:
    assert {"llama", "qwen2", "qwen3", "mistral", "gemma"} <= set(LLMS.names())
    for entry in LLMS.entries():
        assert entry.config_class is not None
        assert entry.summary


def test_plugin_discovered_through_entry_point(
    plugin_on_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "plugin_llama" not in LLMS.names()
    assert registry.load_plugins() == ["test_plugin"]
    assert "plugin_llama" in LLMS.names()
    assert "plugin_identity" in registry.CONNECTORS.names()
    assert main(["list", "connectors"]) == 0
    assert re.search(r"plugin_identity +Identity connector from a plugin\.", capsys.readouterr().out)


def test_broken_plugin_is_reported_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_plugin_distribution(tmp_path, module="raise ImportError('missing dependency xyz')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "plugin_failures", [])
    try:
        assert registry.load_plugins() == []
        assert "missing dependency xyz" in capsys.readouterr().err
        assert "test_plugin" in registry.plugin_failures[0]
    finally:
        sys.modules.pop("mmpt_test_plugin", None)


def test_plugin_component_is_configurable(tmp_path: Path) -> None:
    """In a fresh process, a plugin's LLM config joins the `model.llm` union."""
    make_plugin_distribution(tmp_path)
    config = tmp_path / "plugin.yaml"
    config.write_text("model:\n  llm:\n    name: plugin_llama\n    hidden_size: 32\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    code = "import sys; from mmpretrain.cli import main; sys.exit(main(sys.argv[1:]))"
    ok = subprocess.run(
        [sys.executable, "-c", code, "config", "show", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "name: plugin_llama" in ok.stdout
    config.write_text("model:\n  llm:\n    name: plugin_llama\n    bogus: 1\n", encoding="utf-8")
    bad = subprocess.run(
        [sys.executable, "-c", code, "config", "show", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "model.llm.bogus: unknown key" in bad.stderr
