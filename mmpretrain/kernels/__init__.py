"""The kernel layer: sparse and low-precision kinds of ``nn.Linear``, applied by FQN rules.

``apply_kernels(model, rules)`` swaps matching Linear modules after the model is built
(same Parameters, kind state in buffers); ``kernels_on_step(model, step)`` runs after each
optimizer step; ``materialize_kernels(model)`` turns the kinds back into plain Linears for
export. Importing this package registers the built-in kinds in ``KERNELS``.
"""

from __future__ import annotations

import importlib
import pkgutil

from mmpretrain.kernels.apply import (
    KernelRow,
    apply_kernels,
    format_kernel_table,
    kernel_modules,
    kernel_rows,
    kernels_on_step,
    materialize_kernels,
    select_backends,
)
from mmpretrain.kernels.base import KernelConfig, KernelLinear, register_kernel
from mmpretrain.kernels.rules import KernelRule

# Every other module of this package defines kinds: importing it registers them (a new kind
# is a new file here, nothing else to edit).
_FRAMEWORK = {"apply", "base", "rules"}
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
    if _info.name not in _FRAMEWORK and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "KernelConfig",
    "KernelLinear",
    "KernelRow",
    "KernelRule",
    "apply_kernels",
    "format_kernel_table",
    "kernel_modules",
    "kernel_rows",
    "kernels_on_step",
    "materialize_kernels",
    "register_kernel",
    "select_backends",
]
