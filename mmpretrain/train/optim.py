"""AdamW with the usual parameter groups (no weight decay on norms, biases, embeddings)
and optional per-group learning-rate multipliers (``optim.lr_multipliers``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from mmpretrain.train.config import OptimConfig

_GLOB_CHARS = frozenset("*?[")


def _key_matches(key: str, name: str) -> bool:
    if _GLOB_CHARS & set(key):
        return fnmatchcase(name, key)
    return name == key or name.startswith(key + ".")


def lr_multiplier(name: str, multipliers: Mapping[str, float]) -> tuple[float, str | None]:
    """The factor of parameter ``name`` and the key that gave it (the longest matching key
    of ``multipliers``: a dotted prefix or an fnmatch glob); ``(1.0, None)`` if none."""
    best: str | None = None
    for key in multipliers:
        if _key_matches(key, name) and (best is None or len(key) > len(best)):
            best = key
    return (multipliers[best], best) if best is not None else (1.0, None)


def parameter_groups(
    model: nn.Module, weight_decay: float, lr_multipliers: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """Trainable parameters split into a decayed group (matrices) and an undecayed one
    (vectors: norms and biases; and embedding tables). With ``lr_multipliers`` each of the
    two is split further by factor, and every group carries its ``lr_scale``."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    multipliers = dict(lr_multipliers or {})
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {(1.0, True): [], (1.0, False): []}
    used: set[str] = set()
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))  # tied weights appear once
        scale, key = lr_multiplier(name, multipliers)
        if key is not None:
            used.add(key)
        decayed = not (param.ndim < 2 or id(param) in embeddings)
        groups.setdefault((scale, decayed), []).append(param)
    for key in sorted(set(multipliers) - used):  # one recipe fits text-only and multimodal models
        print(f"warning: optim.lr_multipliers key {key!r} matches no trainable parameter", file=sys.stderr)
    result: list[dict[str, Any]] = []
    for (scale, decayed), params in groups.items():
        group: dict[str, Any] = {"params": params, "weight_decay": weight_decay if decayed else 0.0}
        result.append({**group, "lr_scale": scale} if multipliers else group)
    return result


class GroupScaledAdamW(torch.optim.AdamW):
    """AdamW whose parameter groups may carry ``lr_scale``: the loop sets the scheduled lr
    on every group, and each step runs every group at ``lr * lr_scale`` (the groups' ``lr``
    reads the scheduled value again afterwards, so logs and checkpoints hold the base lr)."""

    def step(self, closure: Callable[[], float] | None = None) -> Any:
        scheduled = [group["lr"] for group in self.param_groups]
        for group in self.param_groups:
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        try:
            return super().step(closure)
        finally:
            for group, lr in zip(self.param_groups, scheduled, strict=True):
                group["lr"] = lr


def _fused_supported(params: Iterable[torch.Tensor]) -> bool:
    devices = {p.device.type for p in params}
    return devices <= {"cuda", "cpu"} and len(devices) == 1


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters: the fused kernel where the device has one
    (CPU and CUDA in current torch), foreach otherwise; :class:`GroupScaledAdamW` when
    ``cfg.lr_multipliers`` scales some groups."""
    groups = parameter_groups(model, cfg.weight_decay, cfg.lr_multipliers)
    params = [p for group in groups for p in group["params"]]
    if not params:
        from mmpretrain.errors import ConfigError

        raise ConfigError("nothing to train: every parameter is frozen (see the `trainable` settings)")
    fused = _fused_supported(params)
    kind = GroupScaledAdamW if cfg.lr_multipliers else torch.optim.AdamW
    return kind(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused, foreach=None if fused else True)
