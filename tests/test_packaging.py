"""The wheel carries every mapped sub-package and the shipped YAML configs."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAPPED_PACKAGES = {
    "mmpretrain": "mmpretrain",
    "mmpretrain.model": "mmpretrain/model",
    "mmpretrain.train": "mmpretrain/train",
    "mmpretrain.kernels": "mmpretrain/kernels",
    "mmpretrain.eval": "mmpretrain/eval",
    "mmpretrain.eval.metrics": "mmpretrain/eval/metrics",
    "mmpretrain.eval.tasks": "mmpretrain/eval/tasks",
    "mmpretrain.export": "mmpretrain/export",
    "mmpretrain.recipes": "mmpretrain/recipes",
    "mmpretrain.encoders": "encoders",
    "mmpretrain.connectors": "connectors",
    "mmpretrain.data": "data",
    "mmpretrain.data.build": "data/build",
    "mmpretrain.configs": "configs",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
        cwd=out,
    )
    (path,) = out.glob("mmpretrain_lm-*.whl")
    return path


def test_every_source_package_is_mapped() -> None:
    """A new package directory must be added to pyproject's packages list (and here)."""
    source_dirs = {
        p.parent.relative_to(REPO).as_posix()
        for root in ("mmpretrain", "encoders", "connectors", "data", "configs")
        for p in (REPO / root).rglob("__init__.py")
    }
    assert source_dirs == set(MAPPED_PACKAGES.values())


def test_wheel_contains_packages_and_yaml(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in MAPPED_PACKAGES:
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    shipped = {p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml")}
    assert shipped and {f"mmpretrain/configs/{y}" for y in shipped} <= names
    assert not any(n.startswith(("encoders/", "data/", "connectors/", "configs/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "mmpt = mmpretrain.cli:console_main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_wheel_imports_every_package(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    script = (
        "import importlib, sys\n"
        f"for name in {sorted(MAPPED_PACKAGES)!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert module.__file__.startswith({str(target)!r}), (name, module.__file__)\n"
        "from mmpretrain.config import load_config\n"
        "print(load_config('tiny').model.llm.name)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "llama"
