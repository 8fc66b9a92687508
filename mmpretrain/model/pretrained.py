"""Save and load a whole MultimodalLM as a directory: its model config (YAML) and its
weights (safetensors; shared tensors such as tied embeddings stored once).

Weights are one ``model.safetensors`` or, over a size limit, shards
``model-00001-of-0000N.safetensors`` with a ``model.safetensors.index.json`` mapping each
tensor to its file (the layout transformers uses). Kernel-layer state (masks, scales,
schedule values) is part of the state dict and is saved and loaded with the weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from torch import nn

from mmpretrain.config import dump_config
from mmpretrain.errors import UserError
from mmpretrain.model.build import build_model
from mmpretrain.model.config import ModelConfig
from mmpretrain.model.multimodal import MultimodalLM

CONFIG_FILE = "model_config.yaml"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARD_PATTERN = "model-{index:05d}-of-{total:05d}.safetensors"


def parse_size(size: int | str) -> int:
    """Bytes of ``5GB``, ``500MB``, ``2GiB`` or an int."""
    if isinstance(size, int):
        return size
    text = size.strip().upper().replace(" ", "")
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "KB": 10**3, "MB": 10**6, "GB": 10**9}
    units |= {"TB": 10**12, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return int(float(text[: -len(unit)]) * factor)
    if text.isdigit():
        return int(text)
    raise UserError(f"size {size!r} is not a size such as 5GB, 500MB or 2GiB")


def unique_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with each shared tensor (tied weights) under its first name only,
    contiguous (safetensors refuses shared and strided tensors)."""
    seen: set[tuple[int, int, str]] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tensor.numel(), str(tensor.dtype))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().contiguous()
    return out


def save_state(
    state: dict[str, torch.Tensor],
    directory: str | Path,
    max_shard_size: int | str = "5GB",
    metadata: dict[str, str] | None = None,
    progress: Callable[[int, int, Path | None], None] | None = None,
) -> list[Path]:
    """Write ``state`` as ``model.safetensors`` or as shards plus an index when it is
    larger than ``max_shard_size`` (a tensor larger than the limit gets a shard of its
    own). Returns the files written. ``progress(done, total, path)`` is called before the
    first weights file (``0, total, None``) and after each one."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    limit = parse_size(max_shard_size)
    tensors = unique_state(state)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    meta = {"format": "pt", **(metadata or {})}
    for stale in [out / WEIGHTS_FILE, out / INDEX_FILE, *out.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)
    report = progress or (lambda done, total, path: None)
    report(0, len(shards), None)
    if len(shards) == 1:
        save_file(shards[0], str(out / WEIGHTS_FILE), metadata=meta)
        report(1, 1, out / WEIGHTS_FILE)
        return [out / WEIGHTS_FILE]
    files = []
    weight_map: dict[str, str] = {}
    for number, shard in enumerate(shards, 1):
        name = SHARD_PATTERN.format(index=number, total=len(shards))
        save_file(shard, str(out / name), metadata=meta)
        files.append(out / name)
        report(number, len(shards), out / name)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total, **(metadata or {})}, "weight_map": weight_map}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return [*files, out / INDEX_FILE]


def has_weights(directory: Path) -> bool:
    """Whether ``directory`` holds ``model.safetensors`` or a shard index."""
    return (directory / WEIGHTS_FILE).is_file() or (directory / INDEX_FILE).is_file()


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``directory``'s ``model.safetensors`` or of the shards its index
    lists; a missing shard, or a tensor absent from the shard the index names, is an error
    naming the file and the tensor."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    source = Path(directory)
    try:
        if (source / INDEX_FILE).is_file():
            index_file = source / INDEX_FILE
            try:
                weight_map: dict[str, str] = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError) as exc:
                raise UserError(f"{index_file} is corrupt: {exc}") from exc
            by_file: dict[str, list[str]] = {}
            for name, file in weight_map.items():
                by_file.setdefault(file, []).append(name)
            tensors: dict[str, torch.Tensor] = {}
            for file, names in by_file.items():
                path = source / file
                if not path.is_file():
                    raise UserError(
                        f"{path} is missing: {index_file.name} lists it for {len(names)} tensors "
                        f"(first: {names[0]!r}); copy the whole export directory"
                    )
                with safe_open(str(path), framework="pt") as handle:
                    present = set(handle.keys())
                    for name in names:
                        if name not in present:
                            raise UserError(
                                f"{path} lacks tensor {name!r}, which {index_file.name} puts there"
                            )
                        tensors[name] = handle.get_tensor(name)
            return tensors
        if (source / WEIGHTS_FILE).is_file():
            return load_file(str(source / WEIGHTS_FILE))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"cannot read the weights in {source}: {exc}") from exc
    raise UserError(f"{source} has no {WEIGHTS_FILE} nor {INDEX_FILE}")


def tied_names(model: nn.Module) -> dict[str, list[str]]:
    """For each state-dict entry, the other entries holding the same tensor (tied weights)."""
    groups: dict[tuple[int, int], list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.device.type == "meta" or tensor.numel() == 0:
            continue
        groups.setdefault((tensor.data_ptr(), tensor.numel()), []).append(name)
    out: dict[str, list[str]] = {}
    for names in groups.values():
        for name in names:
            out[name] = [other for other in names if other != name]
    return out


def _file_of(directory: Path | None, name: str) -> str:
    """``DIR/file`` holding tensor ``name`` (from the shard index), else ``DIR``."""
    if directory is None:
        return "the weights"
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            file = json.loads(index.read_text(encoding="utf-8"))["weight_map"].get(name)
        except (OSError, ValueError, KeyError):
            file = None
        if file:
            return str(directory / file)
    if (directory / WEIGHTS_FILE).is_file():
        return str(directory / WEIGHTS_FILE)
    return str(directory)


def load_state_strict(
    model: nn.Module, tensors: dict[str, torch.Tensor], where: str, directory: Path | None = None
) -> None:
    """``model.load_state_dict(tensors, strict=True)`` with one clear error naming the file
    (``directory``'s shard, else ``where``) and the first missing, unexpected or misshapen
    tensor. Entries tied in the model (shared embeddings) may be given once."""
    expected = model.state_dict()
    for name, tensor in tensors.items():
        if name in expected and tuple(expected[name].shape) != tuple(tensor.shape):
            source = _file_of(directory, name) if directory is not None else where
            raise UserError(
                f"{source}: tensor {name!r} has shape {list(tensor.shape)} but the model needs "
                f"{list(expected[name].shape)} (the weights do not fit {where})"
            )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        place = _file_of(directory, unexpected[0]) if directory else where
        raise UserError(
            f"{place}: {len(unexpected)} tensors the model "
            f"does not have (first: {unexpected[0]!r}); the weights were written for another model config"
        )
    tied = tied_names(model)
    full = dict(tensors)
    missing = []
    for name in expected:
        if name not in full:
            twin = next((other for other in tied.get(name, ()) if other in tensors), None)
            if twin is None:
                missing.append(name)
            else:
                full[name] = tensors[twin]
    if missing:
        raise UserError(
            f"{where}: {len(missing)} tensors of the model are missing (first: {missing[0]!r}); "
            "a shard is incomplete or the weights were written for another model config"
        )
    model.load_state_dict(full, strict=True)


def save_pretrained(
    model: MultimodalLM,
    config: ModelConfig,
    directory: str | Path,
    max_shard_size: int | str = "5GB",
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model_config.yaml`` and the weights (``model.safetensors``, or shards with
    an index over ``max_shard_size``; floating tensors cast to ``dtype`` if given)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(dump_config(config), encoding="utf-8")
    state = model.state_dict()
    if dtype is not None:
        state = {n: t.to(dtype) if t.is_floating_point() else t for n, t in state.items()}
    save_state(state, out, max_shard_size)
    return out


def read_model_config(directory: str | Path) -> ModelConfig:
    """The validated ``model_config.yaml`` of a saved model directory."""
    from mmpretrain.config import validate_config

    source = Path(directory)
    if not (source / CONFIG_FILE).is_file() or not has_weights(source):
        raise UserError(
            f"{source} is not a saved MultimodalLM (needs {CONFIG_FILE} and {WEIGHTS_FILE} or {INDEX_FILE})"
        )
    try:
        data = yaml.safe_load((source / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read {source / CONFIG_FILE}: {exc}") from exc
    return validate_config(ModelConfig, data, str(source / CONFIG_FILE))


def from_pretrained(directory: str | Path) -> tuple[MultimodalLM, ModelConfig]:
    """Build the model of ``directory/model_config.yaml`` and load its weights (strict;
    a missing shard, extra, missing or misshapen tensor is an error naming it)."""
    source = Path(directory)
    config = read_model_config(source)
    model = build_model(config)
    load_state_strict(model, read_weights(source), f"{source / CONFIG_FILE}", source)
    return model, config
