"""AdamW with the usual parameter groups (no weight decay on norms, biases, embeddings)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mmpretrain.train.config import OptimConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Trainable parameters split into a decayed group (matrices) and an undecayed one
    (vectors: norms and biases; and embedding tables)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))  # tied weights appear once
        (no_decay if param.ndim < 2 or id(param) in embeddings else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _fused_supported(params: Iterable[torch.Tensor]) -> bool:
    devices = {p.device.type for p in params}
    return devices <= {"cuda", "cpu"} and len(devices) == 1


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters: the fused kernel where the device has one
    (CPU and CUDA in current torch), foreach otherwise."""
    groups = parameter_groups(model, cfg.weight_decay)
    params = [p for group in groups for p in group["params"]]  # type: ignore[attr-defined]
    if not params:
        from mmpretrain.errors import ConfigError

        raise ConfigError("nothing to train: every parameter is frozen (see the `trainable` settings)")
    fused = _fused_supported(params)
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused, foreach=None if fused else True
    )
