"""``KernelLinear``: the base of every kernel kind (a drop-in ``nn.Linear`` replacement).

A kind is a subclass registered in ``KERNELS`` with :func:`register_kernel`, together with
its pydantic config (a :class:`KernelConfig` subclass with ``name: Literal["<kind>"]``).
The contract every kind keeps (the rules in ``apply.py`` and the training loop rely on it):

- ``Kind.from_linear(linear, cfg, fqn)`` builds the kind from an ``nn.Linear``. The new
  module holds THE SAME ``weight`` / ``bias`` Parameter objects (``new.weight is
  old.weight``), so optimizer state, freezing and checkpoint names are unchanged: the
  dense master weight stays the trained tensor, the kind only changes the numerics.
- Kind state (masks, scales, schedule values) lives in *persistent buffers* created in
  ``__init__`` with shapes fixed by the weight shape and the config, so the model's
  ``state_dict`` (and the DCP checkpoint made of it) carries it and a resumed run is exact.
  Prefer float32 / int64 / bool buffers (safetensors stores them as they are).
- ``backend`` is ``"emulate"`` or ``"cuda"``, resolved at build by :meth:`cuda_support`
  (``cuda`` only when the weight is on a GPU with the needed compute capability and
  library; ``emulate`` everywhere else) from ``cfg.backend`` (``auto`` | ``emulate`` |
  ``cuda``; asking for ``cuda`` where it cannot run is a :class:`ConfigError`).
  :meth:`select_backend` re-runs the check after the model moved to another device.
  Emulation reproduces the format's numerics with ordinary torch ops; its point is
  numerics, not speed. Kinds without a dedicated CUDA path list only ``("emulate",)`` in
  ``backends`` (emulation runs on any device).
- ``forward(x)`` is the kind's numerics (what the layer computes in training).
- ``on_step(step)`` runs after every optimizer step with ``step`` = optimizer steps done so
  far (1 after the first step); schedules, mask recomputation and transitions happen here
  (under ``torch.no_grad``). It must be a function of the step and the module's own state
  only, so a resumed run repeats it exactly.
- A kind may mirror a buffer in a Python attribute (a phase flag read in every forward
  would otherwise sync the GPU): refresh it in ``state_loaded()``, which runs after every
  ``load_state_dict``. ``assign_weight(full)`` overwrites the master weight in place.
- ``effective_weight()`` is the weight the kind computes with (masked, quantized then
  dequantized, ternary times scale); ``materialize()`` returns a plain ``nn.Linear`` with
  it, for export.
- Masks and scales are computed from the full weight (:meth:`full_weight` gathers a
  DTensor shard), so FSDP2 sharding does not change them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal, TypeVar

import torch
from torch import nn

from mmpretrain.config import ComponentConfig
from mmpretrain.errors import ConfigError
from mmpretrain.registry import KERNELS

Backend = Literal["emulate", "cuda"]


class KernelConfig(ComponentConfig):
    """Options every kernel kind has (each kind's config subclasses this)."""

    backend: Literal["auto", "emulate", "cuda"] = "auto"
    """`auto`: the CUDA path where the hardware and library support it, else emulation;
    `emulate`: always the portable reference numerics; `cuda`: require the CUDA path
    (an error where it cannot run)."""


KernelT = TypeVar("KernelT", bound="type[KernelLinear]")


def register_kernel(name: str, config: type[KernelConfig]) -> Callable[[KernelT], KernelT]:
    """Class decorator: register a :class:`KernelLinear` subclass in ``KERNELS`` as ``name``."""

    def decorate(cls: KernelT) -> KernelT:
        cls.kind = name
        cls.config_class = config
        KERNELS.add(name, cls, config=config)
        return cls

    return decorate


class KernelLinear(nn.Module):
    """A Linear layer with a kind's numerics over the dense master ``weight`` / ``bias``."""

    kind: ClassVar[str] = "dense"
    config_class: ClassVar[type[KernelConfig]] = KernelConfig
    backends: ClassVar[tuple[str, ...]] = ("emulate",)
    """Backends this kind implements (``mmpt list kernels`` shows them)."""
    weight: torch.Tensor  # the Linear's own Parameters
    bias: torch.Tensor | None

    def __init__(self, cfg: KernelConfig, linear: nn.Linear, fqn: str = "") -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{type(self).__name__} replaces nn.Linear, not {type(linear).__name__} ({fqn})")
        self.cfg = cfg
        self.fqn = fqn
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight  # the same Parameter objects: optimizer state and names stay
        self.bias = linear.bias
        self.backend: Backend = self.select_backend()
        self.register_load_state_dict_post_hook(lambda module, _incompatible: module.state_loaded())

    @classmethod
    def from_linear(cls: type[Any], linear: nn.Linear, cfg: KernelConfig, fqn: str = "") -> Any:
        """The kind built over ``linear``'s own Parameters (``fqn`` names it in errors and tables)."""
        if not isinstance(cfg, cls.config_class):
            raise TypeError(f"{cls.__name__} takes a {cls.config_class.__name__}, not {type(cfg).__name__}")
        return cls(cfg, linear, fqn)

    # ------------------------------------------------------------------ backend

    @classmethod
    def cuda_support(cls, weight: torch.Tensor) -> tuple[bool, str]:
        """Whether the CUDA path can run for ``weight`` here, and why not (kinds override)."""
        return False, f"{cls.kind} has no CUDA path (its emulation runs on any device)"

    def select_backend(self) -> Backend:
        """Resolve ``cfg.backend`` for the weight's current device (call again after moving)."""
        wanted = self.cfg.backend
        if wanted == "emulate":
            self.backend = "emulate"
            return self.backend
        ok, reason = self.cuda_support(self.weight)
        if wanted == "cuda" and not ok:
            raise ConfigError(
                f"kernel {self.kind} at {self.fqn or 'a Linear'}: backend cuda cannot run here ({reason}); "
                "use backend: auto or emulate"
            )
        self.backend = "cuda" if ok else "emulate"
        return self.backend

    # ------------------------------------------------------------------ numerics

    def full_weight(self) -> torch.Tensor:
        """The whole weight (a DTensor shard is gathered), detached: masks and scales use it."""
        weight: Any = self.weight
        if hasattr(weight, "full_tensor"):
            weight = weight.full_tensor()
        return weight.detach()

    @torch.no_grad()
    def assign_weight(self, value: torch.Tensor) -> None:
        """Overwrite the master weight in place with the full tensor ``value`` (the same
        Parameter object stays; a DTensor weight gets its shard of ``value``)."""
        weight: Any = self.weight
        if hasattr(weight, "full_tensor"):
            from torch.distributed.tensor import distribute_tensor

            value = distribute_tensor(value, weight.device_mesh, weight.placements)
        weight.copy_(value)

    def state_loaded(self) -> None:
        """Called after ``load_state_dict`` filled the buffers: kinds that mirror buffer
        values in Python attributes (to avoid a device sync per forward) refresh them here."""

    def effective_weight(self) -> torch.Tensor:
        """The weight this kind computes with (kinds override); the dense weight here."""
        return self.full_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - kinds override
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def on_step(self, step: int) -> None:
        """Called after every optimizer step (``step`` = steps done); kinds override."""

    @torch.no_grad()
    def materialize(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding :meth:`effective_weight` (for export)."""
        weight = self.effective_weight()
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear = linear.to(device=weight.device, dtype=self.weight.dtype)
        linear.weight.copy_(weight.to(self.weight.dtype))
        if self.bias is not None:
            linear.bias.copy_(self.bias.detach())
        return linear

    def describe(self) -> str:
        """Short settings summary for the start-of-run table (kinds may extend)."""
        return ""

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, kind={self.kind}, backend={self.backend}"
        )


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        return quantized.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def straight_through(x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """Exactly ``quantized`` in the forward pass (``x + (q - x).detach()`` can be off by a
    rounding), identity gradient to ``x`` in the backward pass."""
    return _StraightThrough.apply(x, quantized.detach())
