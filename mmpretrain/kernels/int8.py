"""``int8``: per-block quantized training (Jetfire, Xi et al. 2024).

Activations, weights and gradients are quantized to int8 in 2-D tiles (default 32 x 32)
with one absmax scale per tile (``scale = absmax / 127``, round to nearest), in all three
matmuls (see :mod:`mmpretrain.kernels.quantized`). Square tiles make the quantization
orientation-free: the same tiles serve ``x`` in the forward and ``x.T`` in the weight
gradient, which is what lets Jetfire keep activations in int8 between the two. Tiles
confine an outlier's damage to its own 32 x 32 neighbourhood, unlike per-tensor int8.
Gradients may use stochastic rounding (unbiased; seeded from a step counter in the state).

Backend: ``emulate`` (the same quantized operands multiplied in float32, on any device).
A CUDA path needs a fused per-tile int8 GEMM (Jetfire's Triton kernels); none is bundled.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from mmpretrain.kernels.base import KernelConfig, register_kernel
from mmpretrain.kernels.formats import fake_quantize_int8_blocks, quantize_int8_blocks
from mmpretrain.kernels.quantized import Gemm, QuantizedLinear, Role


class Int8Config(KernelConfig):
    """int8 training with per-block (32x32 tile) absmax scales on every matmul operand (Jetfire)."""

    name: Literal["int8"]
    block_size: int = Field(32, ge=1)
    """Side of the square tiles that share one scale."""
    stochastic_rounding: bool = False
    """Round gradients stochastically (unbiased) instead of to nearest."""
    seed: int = 0
    """Seed of the stochastic rounding noise (with the module name and a step counter)."""


@register_kernel("int8", Int8Config)
class Int8Linear(QuantizedLinear):
    """int8 per-block (Jetfire) Linear."""

    cfg: Int8Config

    @property
    def _tile(self) -> tuple[int, int]:
        return (self.cfg.block_size, self.cfg.block_size)

    def quantize(self, t: Tensor, role: Role, gemm: Gemm, generator: torch.Generator | None) -> Tensor:
        stochastic = role == "grad" and generator is not None
        return fake_quantize_int8_blocks(t, self._tile, stochastic=stochastic, generator=generator)

    def weight_state(self, weight: Tensor) -> dict[str, Tensor]:
        return {"weight_scale": quantize_int8_blocks(weight, self._tile)[1]}

    def describe(self) -> str:
        rounding = ", stochastic grads" if self.cfg.stochastic_rounding else ""
        return f"{self.cfg.block_size}x{self.cfg.block_size} tiles{rounding}"
