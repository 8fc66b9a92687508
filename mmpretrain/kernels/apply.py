"""Swap matching ``nn.Linear`` modules for kernel kinds, step them, export them.

``apply_kernels(model, rules)`` runs right after the model is built (before activation
checkpointing, ``torch.compile`` and sharding). It replaces modules in place, reusing the
Parameters, and returns one :class:`KernelRow` per swapped module: the start-of-run table.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mmpretrain.config import validate_config
from mmpretrain.kernels.base import KernelLinear
from mmpretrain.kernels.rules import KernelRule, first_rule
from mmpretrain.registry import KERNELS


@dataclass(frozen=True)
class KernelRow:
    """One swapped module in the start-of-run table."""

    fqn: str
    kind: str
    backend: str
    shape: tuple[int, int]  # (out_features, in_features), as the weight is stored
    settings: str = ""  # the kind's short summary (``KernelLinear.describe``)


def _as_rules(rules: Sequence[KernelRule | dict[str, Any]]) -> list[KernelRule]:
    checked = []
    for index, rule in enumerate(rules):
        if isinstance(rule, KernelRule):
            checked.append(rule)
        else:
            checked.append(validate_config(KernelRule, rule, f"kernels[{index}]"))
    return checked


def _swappable(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """``nn.Linear`` modules a rule may replace, by FQN. Linears owned by
    ``nn.MultiheadAttention`` are left out: it reads their weights directly."""
    owned_by_mha = {
        id(child)
        for module in model.modules()
        if isinstance(module, nn.MultiheadAttention)
        for child in module.children()
    }
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and id(module) not in owned_by_mha
    ]


def _set_submodule(model: nn.Module, fqn: str, module: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_kernels(model: nn.Module, rules: Sequence[KernelRule | dict[str, Any]]) -> list[KernelRow]:
    """Replace every ``nn.Linear`` that a rule takes (first matching rule wins) by its kind,
    in place; returns the table rows. A rule that takes no module only warns, so one rule
    list serves a text-only model and a VLM alike."""
    checked = _as_rules(rules)
    if not checked:
        return []
    used = [0] * len(checked)
    rows = []
    for fqn, linear in _swappable(model):
        index = first_rule(checked, fqn)
        if index is None:
            continue
        cfg: Any = checked[index].kernel
        kind_class: Any = KERNELS.get(cfg.name).builder
        swapped = kind_class.from_linear(linear, cfg, fqn)
        _set_submodule(model, fqn, swapped)
        used[index] += 1
        rows.append(
            KernelRow(fqn, swapped.kind, swapped.backend, tuple(swapped.weight.shape), swapped.describe())
        )
    for rule, count in zip(checked, used, strict=True):
        if count == 0:
            warnings.warn(
                f"kernel rule {rule.describe()} matched no Linear module", UserWarning, stacklevel=2
            )
    return rows


def kernel_modules(model: nn.Module) -> Iterator[tuple[str, KernelLinear]]:
    """The swapped modules of ``model`` with their FQNs."""
    for name, module in model.named_modules():
        if isinstance(module, KernelLinear):
            yield name, module


def kernel_rows(model: nn.Module) -> list[KernelRow]:
    """The table rows of the kinds already in ``model`` (as :func:`apply_kernels` returned)."""
    return [
        KernelRow(
            name, module.kind, module.backend, (module.out_features, module.in_features), module.describe()
        )
        for name, module in kernel_modules(model)
    ]


@torch.no_grad()
def kernels_on_step(model: nn.Module, step: int) -> None:
    """Run every kind's ``on_step`` hook; call after each optimizer step with the number
    of optimizer steps done."""
    for _, module in kernel_modules(model):
        module.on_step(step)


def select_backends(model: nn.Module) -> list[KernelRow]:
    """Re-resolve each kind's backend for where its weight now lives (after ``.to(device)``)."""
    for _, module in kernel_modules(model):
        module.select_backend()
    return kernel_rows(model)


@torch.no_grad()
def materialize_kernels(model: nn.Module) -> int:
    """Replace every kind by a plain ``nn.Linear`` holding its effective weight (masked,
    dequantized, ternary times scale), in place, for export; returns how many."""
    swapped = list(kernel_modules(model))
    for fqn, module in swapped:
        _set_submodule(model, fqn, module.materialize())
    return len(swapped)


_INDEX = re.compile(r"\.(\d+)(?=\.|$)")


def _ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2,5``."""
    spans: list[list[int]] = []
    for n in sorted(set(numbers)):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def format_kernel_table(rows: Sequence[KernelRow]) -> str:
    """The start-of-run table: modules grouped over layer indices
    (``llm.model.layers.{0-31}.mlp.up_proj``), kind, backend, weight shape, count, settings."""
    if not rows:
        return "kernels: none (every Linear is dense)"
    groups: dict[tuple[str, str, str, tuple[int, int], str], list[int]] = {}
    for row in rows:
        indices = [int(m) for m in _INDEX.findall(row.fqn)]
        pattern = _INDEX.sub(".{}", row.fqn, count=1) if indices else row.fqn
        key = (pattern, row.kind, row.backend, row.shape, row.settings)
        groups.setdefault(key, []).append(indices[0] if indices else -1)
    lines = []
    for (pattern, kind, backend, shape, settings), layer_ids in groups.items():
        spans = _ranges(layer_ids)
        name = pattern.replace("{}", spans if spans.isdigit() else "{" + spans + "}")
        shape_text = f"{shape[0]}x{shape[1]}"
        label = f"{backend} (reference numerics)" if backend == "emulate" else backend
        lines.append((name, kind, label, shape_text, str(len(layer_ids)), settings))
    headers = ("module", "kind", "backend", "weight", "count", "settings")
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    out = ["kernels:  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out += [
        "          " + "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    kinds = sorted({r.kind for r in rows})
    per_kind = ", ".join(f"{k}: {sum(1 for r in rows if r.kind == k)}" for k in kinds)
    out.append(f"          {len(rows)} Linear modules swapped ({per_kind}); every other Linear is dense")
    return "\n".join(out)
