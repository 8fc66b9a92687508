"""Checkpoints in one format: DCP + safetensors for tensors, JSON for everything else.

``run_dir/checkpoints/step_NNNNNNN/`` holds ``tensors/`` (written by
``torch.distributed.checkpoint`` with its ``HuggingFaceStorageWriter``: safetensors, no
pickle, reshardable), ``state.json`` (step, optimizer hyper-parameters, data position,
RNG states as lists, config hash) and, written last, ``COMMITTED``. A checkpoint is
written into a temporary directory and renamed, so a crash at any moment leaves either
the previous committed checkpoint or a new complete one; resume takes the newest
committed one. Nothing here unpickles: a run directory may come from anywhere.

In a process group (torchrun; DESIGN.md section 5) every rank calls :class:`Checkpointer`:
each writes its own shards (``HuggingFaceStorageWriter(save_distributed=True)``: FSDP2
DTensors as their local pieces, replicated tensors once), ``state.json`` gets every rank's
data position and RNG (``ranks``) from rank 0, which alone renames and commits. Loading
reshards: DCP reads the pieces each rank needs whatever world size wrote them, and a run
resumed at another world size continues its data from the earliest global position any
rank had not finished (:func:`data_state_for_rank`). With ``async_save`` the tensors are
copied and written in the background (``dcp.async_save``); the checkpoint commits once the
write has finished (at the next save or :meth:`Checkpointer.wait`).

DeepSpeed runs keep DeepSpeed's own checkpoint (``deepspeed/``: pickle files, so such a run
trusts its run directory) for resume, plus the full model weights in ``tensors/`` (rank 0,
safetensors) so export, evaluation and ``train.init_from`` read them like any checkpoint;
:func:`deepspeed_full_state_dict` converts the DeepSpeed files themselves.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmpretrain.errors import UserError

COMMITTED = "COMMITTED"
STATE_FILE = "state.json"
TENSORS_DIR = "tensors"
DEEPSPEED_DIR = "deepspeed"
DEEPSPEED_TAG = "ds"
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


def _rank_world() -> tuple[int, int]:
    """This process's rank and the world size (0, 1 without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _gather_json(value: Any) -> list[Any]:
    """``value`` of every rank (JSON-ready; sent between this run's own processes)."""
    import torch.distributed as dist

    _, world = _rank_world()
    if world == 1:
        return [value]
    values: list[Any] = [None] * world
    dist.all_gather_object(values, value)
    return values


@dataclass
class _PendingSave:
    """A checkpoint whose tensors are (being) written; ``payload`` (rank 0 only) commits it."""

    tmp: Path
    final: Path
    payload: dict[str, Any] | None
    future: Any = None


class Checkpointer:
    """Writes a run's checkpoints (every rank of a process group calls :meth:`save`).

    ``async_save``: tensors are staged in memory and written by a background thread
    (``dcp.async_save`` over ``process_group``, a group of its own so it never interleaves
    with training collectives); the checkpoint commits when the write is done, checked at
    the next :meth:`save` and in :meth:`wait` (call it before exiting). ``deepspeed``: a
    DeepSpeed engine, whose own checkpoint is written too (``deepspeed/``)."""

    def __init__(
        self,
        run_dir: Path,
        keep_last: int,
        *,
        async_save: bool = False,
        process_group: Any = None,
        deepspeed: Any = None,
    ) -> None:
        self.run_dir = run_dir
        self.keep_last = keep_last
        self.async_save = async_save and deepspeed is None
        self.process_group = process_group
        self.deepspeed = deepspeed
        self._pending: _PendingSave | None = None

    def save(
        self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer | None, state: dict[str, Any]
    ) -> Path:
        """Write the checkpoint of ``step`` (committed on return unless ``async_save``).
        ``state`` is JSON-ready; its ``data`` (this rank's data position) is kept per rank."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import HuggingFaceStorageWriter

        self.wait()
        rank, world = _rank_world()
        final = step_dir(self.run_dir, step)
        tmp = final.with_name(f".tmp-{final.name}")
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        ranks = _gather_json({"data": state.get("data"), "rng": rng_state()})
        future = None
        if self.deepspeed is not None:
            self.deepspeed.save_checkpoint(str(tmp / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, save_latest=False)
            tensors, groups = _deepspeed_model_tensors(self.deepspeed), list[Any]()
            if rank == 0:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    writer = HuggingFaceStorageWriter(str(tmp / TENSORS_DIR))
                    dcp.save(tensors, storage_writer=writer, no_dist=True)
        else:
            tensors, groups = _flat_tensors(model, optimizer)
            writer = HuggingFaceStorageWriter(str(tmp / TENSORS_DIR), save_distributed=world > 1)
            with warnings.catch_warnings():  # "torch.distributed is disabled ... single process": intended
                warnings.simplefilter("ignore", UserWarning)
                if self.async_save:
                    group = self.process_group if world > 1 else None
                    future = dcp.async_save(
                        tensors, storage_writer=writer, process_group=group, no_dist=world == 1
                    )
                else:
                    dcp.save(tensors, storage_writer=writer, no_dist=world == 1)
        payload = None
        if rank == 0:
            payload = {
                "format_version": FORMAT_VERSION,
                "step": step,
                "optimizer_param_groups": groups,
                "rng": ranks[0]["rng"],
                **state,
                "world_size": world,
                **({"ranks": ranks} if world > 1 else {}),
            }
        self._pending = _PendingSave(tmp, final, payload, future)
        if not self.async_save:
            self.wait()
            _barrier()
        return final

    def wait(self) -> Path | None:
        """Finish the pending save (wait for its write, then commit on rank 0); returns
        its directory (None if nothing was pending)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        if pending.future is not None:
            pending.future.result()
        if pending.payload is not None:
            _commit(pending, self.run_dir, self.keep_last)
        return pending.final


def _commit(pending: _PendingSave, run_dir: Path, keep_last: int) -> None:
    """Rank 0: state.json, rename, COMMITTED marker (last), prune."""
    assert pending.payload is not None
    tmp, final = pending.tmp, pending.final
    _write_json(tmp / STATE_FILE, pending.payload)
    if final.exists():  # an uncommitted leftover of a crash at this very step
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    (final / COMMITTED).write_text(f"{pending.payload['step']}\n", encoding="utf-8")
    _fsync_dir(final)
    prune_checkpoints(run_dir, keep_last)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write the checkpoint of ``step`` atomically, then prune to the newest ``keep_last``
    committed ones. ``state`` is JSON-ready (data position, config hash, ...). In a
    process group every rank calls it (each writes its shards)."""
    return Checkpointer(run_dir, keep_last).save(step, model, optimizer, state)


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
    """Names of the tensors a checkpoint holds: from its safetensors index (one process
    wrote it) or the headers of its per-rank shard files (a sharded save has no index)."""
    index = path / TENSORS_DIR / "model.safetensors.index.json"
    shards = sorted((path / TENSORS_DIR).glob("shard-*.safetensors"))
    if shards and not index.is_file():
        from safetensors import safe_open

        names: set[str] = set()
        try:
            for shard in shards:
                with safe_open(str(shard), framework="pt") as handle:
                    names.update(handle.keys())
        except Exception as exc:  # safetensors raises its own error types on a cut file
            raise UserError(
                f"checkpoint {path} is corrupt or incomplete: cannot read {shard.name} ({exc})"
            ) from exc
        return names
    try:
        return set(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(
            f"checkpoint {path} is corrupt or incomplete: cannot read {index.name} ({exc})"
        ) from exc


def data_state_for_rank(state: dict[str, Any], rank: int, world_size: int) -> dict[str, Any] | None:
    """The data position ``rank`` of ``world_size`` resumes from: its own saved one when the
    world size is unchanged; otherwise one layout-free position for every rank, the
    earliest global position any saved rank had not finished (nothing is lost; some
    documents are seen again; losses are not bitwise those of an unchanged run)."""
    saved = [r["data"] for r in state["ranks"]] if "ranks" in state else [state.get("data")]
    if len(saved) == world_size or saved[0] is None:
        return saved[rank] if len(saved) == world_size else None
    if "reader" not in saved[0]:  # a text stream (data.sources)
        from mmpretrain.data.text_pipeline import TextStreamState

        return TextStreamState.continuing([TextStreamState.from_dict(d) for d in saved]).as_dict()
    return _continuing_media_state([d for d in saved if d is not None])


def _continuing_media_state(saved: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Shard streams: every reader restarts at the smallest position any rank's packing
    round started from (``ReaderState.starting_at``, per mix source for a mix)."""
    from mmpretrain.data.media_pipeline import MediaStreamState
    from mmpretrain.data.mixing import MixState
    from mmpretrain.data.reader import ReaderState

    states = [MediaStreamState.from_dict(d) for d in saved]
    readers = [s.reader for s in states if s.reader is not None]
    reader: Any = None
    if readers and isinstance(readers[0], MixState):
        mixes = [r for r in readers if isinstance(r, MixState)]
        names = sorted({n for m in mixes for n in m.readers})
        reader = MixState(
            position=min(m.position for m in mixes),
            readers={
                n: ReaderState.starting_at(min(min(m.readers[n].positions) for m in mixes if n in m.readers))
                for n in names
            },
            counts={n: sum(m.counts.get(n, 0) for m in mixes) for n in names},
        )
    elif readers:
        reader = ReaderState.starting_at(min(min(r.positions) for r in readers if isinstance(r, ReaderState)))
    return MediaStreamState(reader, 0, 0).as_dict()


def _read_state(path: Path) -> dict[str, Any]:
    """``state.json`` of a committed checkpoint (UserError if uncommitted or unreadable)."""
    if not (path / COMMITTED).is_file():
        raise UserError(f"checkpoint {path} is not committed (partial write?): use an older one")
    try:
        state: dict[str, Any] = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"checkpoint {path} is corrupt: cannot read {STATE_FILE} ({exc})") from exc
    if state.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"checkpoint {path} has format {state.get('format_version')}, expected {FORMAT_VERSION}"
        )
    return state


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Load a committed checkpoint into ``model`` (and ``optimizer``) in place and restore
    the RNG states; returns the JSON state, its ``data`` the position this rank resumes
    from. In a process group every rank calls it (any world size may have saved it). A
    partial or corrupt checkpoint is a UserError."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state = _read_state(path)
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
    rank, world = _rank_world()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            reader = HuggingFaceStorageReader(str(path / TENSORS_DIR))
            dcp.load(tensors, storage_reader=reader, no_dist=world == 1)
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
    return _state_for_rank(state, rank, world)


def _state_for_rank(state: dict[str, Any], rank: int, world: int) -> dict[str, Any]:
    """Restore this rank's RNG (rank 0's at another world size) and return the state with
    ``data`` the position this rank resumes from."""
    ranks = state.get("ranks", [{"data": state.get("data"), "rng": state["rng"]}])
    set_rng_state(ranks[rank]["rng"] if len(ranks) == world else ranks[0]["rng"])
    return {**state, "data": data_state_for_rank(state, rank, world)}


def load_deepspeed_checkpoint(path: Path, engine: Any) -> dict[str, Any]:
    """Load a committed checkpoint of a DeepSpeed run into ``engine`` (model, optimizer;
    DeepSpeed unpickles its own files: the run directory is trusted) and restore the RNG;
    returns the JSON state. DeepSpeed resumes at the world size that saved."""
    state = _read_state(path)
    rank, world = _rank_world()
    saved_world = int(state.get("world_size", 1))
    if not (path / DEEPSPEED_DIR).is_dir():
        raise UserError(
            f"checkpoint {path} has no {DEEPSPEED_DIR}/ directory: it was not written by a deepspeed run"
        )
    if saved_world != world:
        raise UserError(
            f"checkpoint {path} was written by {saved_world} DeepSpeed ranks, this run has {world}: resume "
            f"with {saved_world} processes, or use distributed.backend=fsdp2, whose checkpoints reshard"
        )
    engine.load_checkpoint(
        str(path / DEEPSPEED_DIR),
        tag=DEEPSPEED_TAG,
        load_optimizer_states=True,
        load_lr_scheduler_states=False,
    )
    return _state_for_rank(state, rank, world)


def _deepspeed_model_tensors(engine: Any) -> dict[str, torch.Tensor]:
    """Rank 0: the full model tensors of a DeepSpeed engine under ``model.`` names (ZeRO-3
    parameters gathered one at a time); other ranks: empty (but they join the gathers)."""
    rank, _ = _rank_world()
    module = engine.module
    tensors: dict[str, torch.Tensor] = {}
    if engine.zero_optimization_stage() < 3:
        if rank == 0:
            tensors = {f"model.{k}": v.detach().clone() for k, v in module.state_dict().items()}
        return tensors
    import deepspeed

    for name, param in module.named_parameters():
        with deepspeed.zero.GatheredParameters([param]):
            if rank == 0:
                tensors[f"model.{name}"] = param.detach().clone()
    if rank == 0:
        params = {n for n, _ in module.named_parameters()}
        tensors.update(
            {f"model.{k}": v.detach().clone() for k, v in module.state_dict().items() if k not in params}
        )
    return tensors


def deepspeed_full_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The full fp32 model weights (``MultimodalLM`` parameter names) converted from the
    DeepSpeed files of a checkpoint of a ``distributed.backend: deepspeed`` run (``path``: a
    run directory or a checkpoint directory). DeepSpeed's files are pickles: call this only
    on run directories you trust. (Such checkpoints also hold the weights as safetensors in
    ``tensors/``, which need no trust.)"""
    checkpoint = latest_checkpoint(path)
    if checkpoint is None or not (checkpoint / DEEPSPEED_DIR).is_dir():
        raise UserError(
            f"{path} holds no committed checkpoint of a deepspeed run ({DEEPSPEED_DIR}/ directory)"
        )
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return dict(get_fp32_state_dict_from_zero_checkpoint(str(checkpoint / DEEPSPEED_DIR), tag=DEEPSPEED_TAG))
