"""Checkpoints in one format: DCP + safetensors for tensors, JSON for everything else.

``run_dir/checkpoints/step_NNNNNNN/`` holds ``tensors/`` (written by
``torch.distributed.checkpoint`` with its ``HuggingFaceStorageWriter``: safetensors, no
pickle, reshardable), ``state.json`` (step, optimizer hyper-parameters, data position,
RNG states as lists, config hash) and, written last, ``COMMITTED``. A checkpoint is
written into a temporary directory and renamed, so a crash at any moment leaves either
the previous committed checkpoint or a new complete one; resume takes the newest
committed one. Nothing here unpickles: a run directory may come from anywhere.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmpretrain.errors import UserError

COMMITTED = "COMMITTED"
STATE_FILE = "state.json"
TENSORS_DIR = "tensors"
FORMAT_VERSION = 1


def checkpoints_root(run_dir: Path) -> Path:
    """Directory holding a run's checkpoints."""
    return run_dir / "checkpoints"


def step_dir(run_dir: Path, step: int) -> Path:
    """Directory of the checkpoint taken after ``step`` optimizer steps."""
    return checkpoints_root(run_dir) / f"step_{step:07d}"


def committed_checkpoints(run_dir: Path) -> list[Path]:
    """Committed checkpoint directories, oldest first."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and (p / COMMITTED).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(path: Path) -> Path | None:
    """The newest committed checkpoint of a run directory, or ``path`` itself if it is a
    committed checkpoint directory; None if there is none."""
    if (path / COMMITTED).is_file():
        return path
    found = committed_checkpoints(path)
    return found[-1] if found else None


# ---------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """Every RNG's state as JSON-ready lists (no pickle in checkpoints)."""
    np_state: Any = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# ---------------------------------------------------------------------------- tensors


def _flat_tensors(
    model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> tuple[dict[str, Any], list[Any]]:
    """Model and optimizer tensors under flat names, plus the optimizer's param groups
    (hyper-parameters; JSON)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    tensors: dict[str, Any] = {f"model.{k}": v for k, v in get_model_state_dict(model).items()}
    groups: list[Any] = []
    if optimizer is not None:
        optim_state: Any = get_optimizer_state_dict(model, optimizer)
        for fqn, slots in optim_state["state"].items():
            for slot, value in slots.items():
                tensors[f"optim.{fqn}.{slot}"] = value
        groups = optim_state["param_groups"]
    return tensors, groups


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write the checkpoint of ``step`` atomically, then prune to the newest ``keep_last``
    committed ones. ``state`` is JSON-ready (data position, config hash, ...)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    final = step_dir(run_dir, step)
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors, groups = _flat_tensors(model, optimizer)
    with warnings.catch_warnings():  # "torch.distributed is disabled ... single process": intended
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(tmp / TENSORS_DIR)), no_dist=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "optimizer_param_groups": groups,
        "rng": rng_state(),
        **state,
    }
    _write_json(tmp / STATE_FILE, payload)
    if final.exists():  # an uncommitted leftover of a crash at this very step
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    (final / COMMITTED).write_text(f"{step}\n", encoding="utf-8")
    _fsync_dir(final)
    prune_checkpoints(run_dir, keep_last)
    return final


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` committed checkpoints (never the newest
    one), and uncommitted leftovers older than the newest committed one."""
    committed = committed_checkpoints(run_dir)
    for old in committed[: max(len(committed) - max(keep_last, 1), 0)]:
        # un-commit first: a kill half-way through rmtree leaves an uncommitted leftover
        # (removed by the next prune), never a "committed" directory with files missing
        (old / COMMITTED).unlink(missing_ok=True)
        shutil.rmtree(old, ignore_errors=True)
    if committed:
        newest = committed[-1].name
        for leftover in checkpoints_root(run_dir).glob("*step_*"):
            if not (leftover / COMMITTED).exists() and leftover.name.removeprefix(".tmp-") < newest:
                shutil.rmtree(leftover, ignore_errors=True)


def _saved_tensor_names(path: Path) -> set[str]:
    """Names of the tensors a checkpoint holds (from its safetensors index)."""
    index = path / TENSORS_DIR / "model.safetensors.index.json"
    try:
        return set(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(
            f"checkpoint {path} is corrupt or incomplete: cannot read {index.name} ({exc})"
        ) from exc


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Load a committed checkpoint into ``model`` (and ``optimizer``) in place and restore
    the RNG states; returns the JSON state. A partial or corrupt checkpoint is a UserError."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    if not (path / COMMITTED).is_file():
        raise UserError(f"checkpoint {path} is not committed (partial write?): use an older one")
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"checkpoint {path} is corrupt: cannot read {STATE_FILE} ({exc})") from exc
    if state.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"checkpoint {path} has format {state.get('format_version')}, expected {FORMAT_VERSION}"
        )
    tensors, _ = _flat_tensors(model, optimizer)
    saved_names = _saved_tensor_names(path)
    missing = sorted(k for k in tensors if k.startswith("model.") and k not in saved_names)
    if missing:
        raise UserError(
            f"checkpoint {path} does not match the model: {len(missing)} parameters missing "
            f"(first: {missing[0][len('model.') :]}); was it written by another model config?"
        )
    # Parameters that never received a gradient (e.g. a tower's unused last layers) have no
    # optimizer state in the checkpoint; they keep the fresh zero state, as in the saving run.
    tensors = {k: v for k, v in tensors.items() if k in saved_names}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(path / TENSORS_DIR)), no_dist=True)
    except (Exception, CheckpointException) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(exc).__name__  # DCP wraps the cause in a traceback text
        raise UserError(
            f"checkpoint {path} is corrupt or incomplete ({reason}): resume from an older one"
        ) from exc
    set_model_state_dict(model, {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    if optimizer is not None:
        slots: dict[str, dict[str, Any]] = {}
        for name, value in tensors.items():
            if name.startswith("optim."):
                fqn, _, slot = name[len("optim.") :].rpartition(".")
                slots.setdefault(fqn, {})[slot] = value
        optim_state: Any = {"state": slots, "param_groups": state["optimizer_param_groups"]}
        set_optimizer_state_dict(model, optimizer, optim_state, options=StateDictOptions(strict=False))
    set_rng_state(state["rng"])
    return state
