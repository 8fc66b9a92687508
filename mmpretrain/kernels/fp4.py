"""``mxfp4`` and ``nvfp4``: 4-bit (E2M1) block-scaled training.

- ``mxfp4`` (OCP Microscaling): blocks of 32 along the contraction dim share an E8M0
  power-of-two scale ``2^(floor(log2(amax)) - 2)``; elements are E2M1 (round to nearest
  even, saturating at 6).
- ``nvfp4`` (NVIDIA): blocks of 16 with an E4M3 scale, plus one fp32 scale per tensor.

All three matmuls (see :mod:`mmpretrain.kernels.quantized`) quantize both operands along
their contraction dim, as Blackwell's block-scaled GEMMs do; weights and activations round
to nearest, gradients stochastically by default (unbiased, which low-bit training needs:
Tseng et al. 2025 for MXFP4, NVIDIA's NVFP4 pre-training recipe). For mxfp4 the gradient is
multiplied by 3/4 before its stochastic rounding and the product by 4/3 after (Tseng et
al.), because the MX scale lets a block's amax land anywhere in [4, 8) and clipping at 6
would bias the rounding. ``quantize_backward: false`` keeps gradients in full precision
(the backward reuses the forward's quantized weights and activations).

Backend: ``emulate`` (exact format numerics in float32, any device). Hardware FP4 GEMMs
(sm100) are not wired here.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from mmpretrain.kernels.base import KernelConfig, register_kernel
from mmpretrain.kernels.formats import (
    MX_BLOCK,
    NV_BLOCK,
    fake_quantize_mxfp4,
    fake_quantize_nvfp4,
    quantize_mxfp4,
    quantize_nvfp4,
)
from mmpretrain.kernels.quantized import Gemm, QuantizedLinear, Role

MX_SR_HEADROOM = 0.75  # 8 * 3/4 = 6: a scaled block amax never exceeds the E2M1 max


class Fp4Config(KernelConfig):
    """Options shared by the 4-bit kinds."""

    stochastic_rounding: bool = True
    """Round gradients stochastically (unbiased) instead of to nearest."""
    quantize_backward: bool = True
    """Quantize the backward matmuls too (gradients in FP4); false keeps gradients in full
    precision and reuses the forward's quantized weights and activations."""
    seed: int = 0
    """Seed of the stochastic rounding noise (with the module name and a step counter)."""


class Mxfp4Config(Fp4Config):
    """MXFP4 training: E2M1 values, blocks of 32 with an E8M0 power-of-two scale (OCP MX)."""

    name: Literal["mxfp4"]


class Nvfp4Config(Fp4Config):
    """NVFP4 training: E2M1 values, blocks of 16 with an E4M3 scale plus a per-tensor fp32 scale."""

    name: Literal["nvfp4"]


class _Fp4Linear(QuantizedLinear):
    cfg: Fp4Config
    block: int

    def _round_trip(self, t: Tensor, stochastic: bool, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def quantize(self, t: Tensor, role: Role, gemm: Gemm, generator: torch.Generator | None) -> Tensor:
        if gemm != "fprop" and not self.cfg.quantize_backward:
            if role == "grad":
                return t.float()
            return self.quantize(t.t(), role, "fprop", None).t()  # the forward's quantized operand
        stochastic = role == "grad" and generator is not None
        return self._round_trip(t, stochastic, generator)

    def describe(self) -> str:
        grads = "fp32 grads" if not self.cfg.quantize_backward else "fp4 grads"
        rounding = ", stochastic" if self.cfg.stochastic_rounding and self.cfg.quantize_backward else ""
        return f"blocks of {self.block}, {grads}{rounding}"


@register_kernel("mxfp4", Mxfp4Config)
class Mxfp4Linear(_Fp4Linear):
    """MXFP4 Linear (blocks of 32, E8M0 scales)."""

    block = MX_BLOCK

    def _round_trip(self, t: Tensor, stochastic: bool, generator: torch.Generator | None) -> Tensor:
        if not stochastic:
            return fake_quantize_mxfp4(t)
        scaled = fake_quantize_mxfp4(t.float() * MX_SR_HEADROOM, stochastic=True, generator=generator)
        return scaled / MX_SR_HEADROOM

    def weight_state(self, weight: Tensor) -> dict[str, Tensor]:
        return {"weight_scale": quantize_mxfp4(weight)[1]}


@register_kernel("nvfp4", Nvfp4Config)
class Nvfp4Linear(_Fp4Linear):
    """NVFP4 Linear (blocks of 16, E4M3 block scales, fp32 tensor scale)."""

    block = NV_BLOCK

    def _round_trip(self, t: Tensor, stochastic: bool, generator: torch.Generator | None) -> Tensor:
        return fake_quantize_nvfp4(t, stochastic=stochastic, generator=generator)

    def weight_state(self, weight: Tensor) -> dict[str, Tensor]:
        _, block_scale, tensor_scale = quantize_nvfp4(weight)
        return {"weight_block_scale": block_scale, "weight_tensor_scale": tensor_scale.reshape(1)}
