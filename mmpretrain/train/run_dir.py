"""The run directory: refuse to clobber, record config, versions and git revision, and
refuse to resume with a changed config (except run-control keys and, at a stage boundary,
the data mixing weights)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from mmpretrain.config import dump_config
from mmpretrain.errors import ConfigError, UserError
from mmpretrain.run_config import RunConfig

# Keys that control a run without changing what it computes: they may differ on resume.
RUN_CONTROL_KEYS = frozenset(
    {"train.stop_after_steps", "train.log_every", "train.save_every", "train.keep_last"}
)
# Keys that may change at a resume (a stage boundary): the mixing weights apply from the
# resumed position on. Matched against dotted keys (list items flatten to their index).
STAGE_KEY_PATTERNS = (re.compile(r"data\.shards\.mix\.\d+\.weight"), re.compile(r"data\.shards\.temperature"))
PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "pydantic", "numpy", "mmpretrain-lm")


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Create ``run_dir``; an existing non-empty one needs ``resume`` or ``overwrite``."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if overwrite:
            shutil.rmtree(run_dir)
        elif not resume:
            raise UserError(
                f"run directory {run_dir} already exists: pass --resume to continue it "
                "or --overwrite to replace it"
            )
    run_dir.mkdir(parents=True, exist_ok=True)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of nested mappings; a list of mappings flattens by index
    (``data.shards.mix.0.weight``), other lists stay values."""
    if isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        data = {str(i): item for i, item in enumerate(data)}
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}


def is_stage_key(key: str) -> bool:
    """Whether ``key`` may change when a run is resumed at a stage boundary (mixing weights)."""
    return any(pattern.fullmatch(key) for pattern in STAGE_KEY_PATTERNS)


def config_hash(config: RunConfig) -> str:
    """Hash of everything in the config that changes what a run computes."""
    flat = _flatten(config.model_dump(mode="json"))
    relevant = {k: v for k, v in sorted(flat.items()) if k not in RUN_CONTROL_KEYS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def changed_keys(saved: RunConfig, current: RunConfig) -> list[str]:
    """Keys (dotted) whose values differ, run-control keys excluded (stage keys included)."""
    old = _flatten(saved.model_dump(mode="json"))
    new = _flatten(current.model_dump(mode="json"))
    return sorted(
        k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in RUN_CONTROL_KEYS
    )


def check_resume_config(run_dir: Path, config: RunConfig) -> list[str]:
    """Exit-2 error naming the keys if ``config`` differs from the run's saved one in
    anything but run-control and stage keys; returns the changed stage keys (new mixing
    weights, which apply from the resumed position on)."""
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        return []
    saved = RunConfig.model_validate(yaml.safe_load(saved_file.read_text(encoding="utf-8")))
    changed = changed_keys(saved, config)
    keys = [k for k in changed if not is_stage_key(k)]
    if keys:
        shown = ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
        raise ConfigError(
            f"cannot resume {run_dir}: the config differs from the saved one in {shown}; "
            "only run-control keys (" + ", ".join(sorted(RUN_CONTROL_KEYS)) + ") and the mixing "
            "weights (data.shards.mix.N.weight, data.shards.temperature) may change"
        )
    return [k for k in changed if is_stage_key(k)]


def git_revision() -> str | None:
    """The source tree's git revision (with '-dirty' if modified), or None."""
    source = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}-dirty" if dirty else rev


def record_run(run_dir: Path, config: RunConfig, argv: list[str] | None = None) -> None:
    """Write ``config.yaml`` (resolved) and ``environment.json`` (versions, git, host)."""
    (run_dir / "config.yaml").write_text(dump_config(config), encoding="utf-8")
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    environment = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": versions,
        "git_revision": git_revision(),
        "argv": argv if argv is not None else sys.argv,
        "config_hash": config_hash(config),
    }
    (run_dir / "environment.json").write_text(json.dumps(environment, indent=2) + "\n", encoding="utf-8")
