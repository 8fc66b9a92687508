"""``QuantizedLinear``: the shared base of the fp8, int8, mxfp4 and nvfp4 kinds.

A linear layer runs three matmuls per training step, and a low-precision recipe quantizes
the operands of each (both laid out ``[rows, contraction]``, so block formats put their
blocks along the contraction dim, as a hardware kernel needs them):

- ``fprop``:  ``y  = x  @ W.T``   operands ``x [M, K]`` (input) and ``W [N, K]`` (weight)
- ``dgrad``:  ``dx = dy @ W``     operands ``dy [M, N]`` (grad) and ``W.T [K, N]`` (weight)
- ``wgrad``:  ``dW = dy.T @ x``   operands ``dy.T [N, M]`` (grad) and ``x.T [K, M]`` (input)

A kind implements :meth:`QuantizedLinear.quantize` (operand -> dequantized float32, i.e.
the exact values the format can hold) and the emulated matmul multiplies those in float32
with autocast off (what a scaled low-precision GEMM with fp32 accumulation computes, up to
summation order); a kind with a real low-precision GEMM overrides :meth:`matmul` for its
``cuda`` backend. The output takes the autocast dtype where autocast is on, else the
input's dtype, like ``nn.Linear``.

Kind state kept in persistent buffers: the weight's scales of the latest training forward
(for inspection and export; they are recomputed from the weight every forward, so the
numerics never depend on stale scales), and, for kinds with stochastic rounding of
gradients, a counter of backward passes that seeds the rounding noise, so a resumed run
draws the same noise as an uninterrupted one.
"""

from __future__ import annotations

import zlib
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mmpretrain.kernels.base import KernelConfig, KernelLinear

Role = Literal["input", "weight", "grad"]
Gemm = Literal["fprop", "dgrad", "wgrad"]


class QuantizedLinear(KernelLinear):
    """A Linear whose three matmuls quantize their operands (see the module docstring)."""

    def __init__(self, cfg: KernelConfig, linear: nn.Linear, fqn: str = "") -> None:
        super().__init__(cfg, linear, fqn)
        if self.has_stochastic_option():
            self.register_buffer(
                "grad_rounding_calls", torch.zeros((), dtype=torch.int64, device=self.weight.device)
            )
        for name, value in self.weight_state(self.full_weight()).items():
            self.register_buffer(name, value.clone())

    # ------------------------------------------------------------------ what kinds define

    def quantize(self, t: Tensor, role: Role, gemm: Gemm, generator: torch.Generator | None) -> Tensor:
        """``t`` ([rows, contraction]) quantized and dequantized to float32 (kinds override)."""
        raise NotImplementedError(f"{type(self).__name__}.quantize")

    def weight_state(self, weight: Tensor) -> dict[str, Tensor]:
        """Buffers describing the quantized weight (its scales), by buffer name (kinds override)."""
        return {}

    # ------------------------------------------------------------------ shared machinery

    def matmul(
        self, a: Tensor, a_role: Role, b: Tensor, b_role: Role, gemm: Gemm, generator: torch.Generator | None
    ) -> Tensor:
        """``quantize(a) @ quantize(b).T`` in float32 (``a [M, C]``, ``b [N, C]``)."""
        return self.quantize(a, a_role, gemm, generator) @ self.quantize(b, b_role, gemm, generator).t()

    @classmethod
    def has_stochastic_option(cls) -> bool:
        return "stochastic_rounding" in cls.config_class.model_fields

    def grad_generator(self, device: torch.device) -> torch.Generator | None:
        """The seeded generator for one backward pass's stochastic rounding (None when off).

        Seeded from the config seed, the module's FQN and the count of earlier backward
        passes (a buffer), so the noise differs per layer and step and survives resume."""
        if not getattr(self.cfg, "stochastic_rounding", False):
            return None
        counter = self.get_buffer("grad_rounding_calls")
        calls = int(counter)
        seed = (
            int(getattr(self.cfg, "seed", 0)) * 0x9E3779B1 + zlib.crc32(self.fqn.encode()) * 1_000_003 + calls
        )
        counter.add_(1)
        return torch.Generator(device=device).manual_seed(seed % 2**63)

    @torch.no_grad()
    def _record_weight_state(self) -> None:
        for name, value in self.weight_state(self.weight.detach()).items():
            getattr(self, name).copy_(value)

    def forward(self, x: Tensor) -> Tensor:
        device_type = x.device.type
        out_dtype = (
            torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
        )
        if self.training and torch.is_grad_enabled():
            self._record_weight_state()
        x2d = x.reshape(-1, self.in_features)
        y = _QuantizedLinearFunction.apply(x2d, self.weight, self)
        y = y.to(out_dtype).reshape(*x.shape[:-1], self.out_features)
        if self.bias is not None:
            y = y + self.bias.to(out_dtype)
        return y

    def effective_weight(self) -> Tensor:
        """The weight as the forward matmul sees it (quantized, dequantized)."""
        weight = self.full_weight()
        return self.quantize(weight, "weight", "fprop", None).to(weight.dtype)


class _QuantizedLinearFunction(torch.autograd.Function):
    """``x2d @ weight.T`` with every operand of the three matmuls quantized by the module."""

    @staticmethod
    def forward(ctx: Any, x2d: Tensor, weight: Tensor, module: QuantizedLinear) -> Tensor:
        ctx.module = module
        ctx.save_for_backward(x2d, weight)
        with torch.autocast(x2d.device.type, enabled=False):
            return module.matmul(x2d, "input", weight, "weight", "fprop", None)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x2d, weight = ctx.saved_tensors
        module: QuantizedLinear = ctx.module
        grad = grad.contiguous()
        generator = module.grad_generator(grad.device)
        grad_x = grad_w = None
        with torch.autocast(grad.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                grad_x = module.matmul(grad, "grad", weight.t(), "weight", "dgrad", generator).to(x2d.dtype)
            if ctx.needs_input_grad[1]:
                grad_w = module.matmul(grad.t(), "grad", x2d.t(), "input", "wgrad", generator).to(
                    weight.dtype
                )
        return grad_x, grad_w, None
