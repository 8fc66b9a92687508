"""``fp8``: e4m3 weights and activations, e5m2 gradients, dynamic tensor- or row-wise scales.

The recipe of torchao's float8 training and Transformer Engine's current scaling: every
operand of the three matmuls (see :mod:`mmpretrain.kernels.quantized`) is scaled by
``amax / max`` computed from the tensor itself (``tensorwise``: one scale per operand;
``rowwise``: one per row of the ``[rows, contraction]`` operand, i.e. weights get
per-output-channel scales in the forward and per-input-channel scales in the backward),
clamped to the format max and cast with round-to-nearest-even. Master weights stay in
their own dtype; the weight's forward scales are kept in the ``weight_scale`` buffer.

Backends: ``cuda`` multiplies real float8 tensors with ``torch._scaled_mm`` (fp32
accumulation) on compute capability 8.9+ (``rowwise`` needs 9.0+), when the weight's dims
are multiples of 16; ``emulate`` computes the same quantized operands in float32 anywhere.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mmpretrain.errors import ConfigError
from mmpretrain.kernels.base import KernelConfig, register_kernel
from mmpretrain.kernels.formats import fake_quantize_fp8, fp8_scale, quantize_fp8
from mmpretrain.kernels.quantized import Gemm, QuantizedLinear, Role


class Fp8Config(KernelConfig):
    """fp8 training: e4m3 weights/activations, e5m2 gradients, dynamic scaling (torchao float8 recipe)."""

    name: Literal["fp8"]
    scaling: Literal["tensorwise", "rowwise"] = "tensorwise"
    """`tensorwise`: one amax-based scale per operand; `rowwise`: one per row of each
    operand along the matmul's contraction dim (finer, more robust to outlier rows)."""
    grad_format: Literal["e5m2", "e4m3"] = "e5m2"
    """fp8 format of gradients: e5m2 (range, the standard recipe) or e4m3 (precision)."""


def _pad_to(t: Tensor, rows: int, cols: int) -> Tensor:
    return F.pad(t, (0, cols - t.shape[1], 0, rows - t.shape[0]))


def _round_up(n: int, multiple: int = 16) -> int:
    return -(-n // multiple) * multiple


@register_kernel("fp8", Fp8Config)
class Fp8Linear(QuantizedLinear):
    """fp8 (e4m3 forward / e5m2 gradients) Linear with dynamic scaling."""

    backends = ("emulate", "cuda")
    cfg: Fp8Config

    @property
    def _dim(self) -> int | None:
        return -1 if self.cfg.scaling == "rowwise" else None

    def _format(self, role: Role) -> Literal["e4m3", "e5m2"]:
        return self.cfg.grad_format if role == "grad" else "e4m3"

    def quantize(self, t: Tensor, role: Role, gemm: Gemm, generator: torch.Generator | None) -> Tensor:
        return fake_quantize_fp8(t, self._format(role), self._dim)

    def weight_state(self, weight: Tensor) -> dict[str, Tensor]:
        scale = fp8_scale(weight, "e4m3", self._dim)
        return {"weight_scale": scale.reshape(-1, 1) if self._dim is not None else scale.reshape(1)}

    def describe(self) -> str:
        return f"e4m3 / {self.cfg.grad_format} grads, {self.cfg.scaling}"

    # ------------------------------------------------------------------ cuda backend

    @classmethod
    def cuda_support(cls, weight: Tensor) -> tuple[bool, str]:
        if not weight.is_cuda:
            return False, "the weight is not on a CUDA device"
        if not hasattr(torch, "_scaled_mm"):
            return False, f"torch {torch.__version__} has no torch._scaled_mm"
        capability = torch.cuda.get_device_capability(weight.device)
        if capability < (8, 9):
            return (
                False,
                f"fp8 matmuls need compute capability 8.9+, this GPU has {capability[0]}.{capability[1]}",
            )
        if weight.shape[0] % 16 or weight.shape[1] % 16:
            return False, f"fp8 matmuls need weight dims divisible by 16, got {tuple(weight.shape)}"
        return True, ""

    def select_backend(self) -> Literal["emulate", "cuda"]:
        backend = super().select_backend()
        if backend == "cuda" and self.cfg.scaling == "rowwise":
            capability = torch.cuda.get_device_capability(self.weight.device)
            if capability < (9, 0):
                if self.cfg.backend == "cuda":
                    raise ConfigError(
                        f"kernel fp8 at {self.fqn or 'a Linear'}: rowwise scaled fp8 matmuls need "
                        f"compute capability 9.0+, this GPU has {capability[0]}.{capability[1]}; "
                        "use scaling: tensorwise"
                    )
                self.backend = "emulate"
        return self.backend

    def matmul(
        self, a: Tensor, a_role: Role, b: Tensor, b_role: Role, gemm: Gemm, generator: torch.Generator | None
    ) -> Tensor:
        if self.backend != "cuda":
            return super().matmul(a, a_role, b, b_role, gemm, generator)
        # torch._scaled_mm wants every dim a multiple of 16: zero rows/columns change no amax
        # and add nothing to the contraction.
        rows_a, rows_b, inner = a.shape[0], b.shape[0], a.shape[1]
        a = _pad_to(a, _round_up(rows_a), _round_up(inner))
        b = _pad_to(b, _round_up(rows_b), _round_up(inner))
        a_q, a_scale = quantize_fp8(a, self._format(a_role), self._dim)
        b_q, b_scale = quantize_fp8(b, self._format(b_role), self._dim)
        if self._dim is None:
            scale_a, scale_b, out_dtype = a_scale.reshape(()), b_scale.reshape(()), torch.float32
        else:  # row-wise scaled_mm: scale_a [M, 1], scale_b [1, N], bf16 output
            scale_a, scale_b, out_dtype = a_scale, b_scale.t().contiguous(), torch.bfloat16
        out = torch._scaled_mm(
            a_q.contiguous(), b_q.contiguous().t(), scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype
        )
        return out[:rows_a, :rows_b].float()
