"""``bitnet``: BitNet b1.58 ternary weights with 8-bit activations, and a 16-bit to
1.58-bit transition for continual pre-training.

Numerics (Ma et al. 2024, "The era of 1-bit LLMs"; "BitNet b1.58 training tips"):

- weights: ``scale = mean(|w|) + eps`` per tensor, ``q(w) = clamp(round(w / scale), -1, 1)``,
  the layer computes with ``q(w) * scale`` (values in ``{-scale, 0, +scale}``);
- activations: per token (last dim) absmax to 8 bits,
  ``q(x) = clamp(round(x * 127 / max|x|), -128, 127) * max|x| / 127``;
- gradients pass straight through both quantizers (STE); the master weight stays dense.

Transition (continual QAT from a 16-bit checkpoint): ``lam`` ramps linearly from 0 to 1 over
``transition_steps`` optimizer steps starting at ``transition_start``; the layer computes
with ``(1 - lam) * w + lam * q(w)`` and ``(1 - lam) * x + lam * q(x)``. ``transition_steps:
0`` means ternary from the first step (training from scratch). ``lam`` is a buffer, so a
resumed run continues the ramp exactly.

Export: :func:`export_ternary` packs each finished layer's ternary weights 2 bits per
weight (4 per byte) with its fp32 scale; :func:`load_ternary` puts :class:`TernaryLinear`
modules (same numerics, weights unpacked from the 2-bit codes) into a model, which then
gives the same logits. ``materialize()`` gives a plain Linear with ``q(w) * scale`` (it
drops the activation quantizer).

Backends: ``emulate`` only (torch ops on any device; no packed ternary GPU kernels here).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mmpretrain.errors import UserError
from mmpretrain.kernels.apply import kernel_modules
from mmpretrain.kernels.base import KernelConfig, KernelLinear, register_kernel, straight_through


class BitNetConfig(KernelConfig):
    """BitNet b1.58: ternary absmean weights, 8-bit absmax activations, 16-bit to 1.58-bit transition."""

    name: Literal["bitnet"]
    transition_start: int = Field(default=0, ge=0)
    """Optimizer step at which the ramp from 16-bit to ternary starts."""
    transition_steps: int = Field(default=0, ge=0)
    """Length of the linear ramp; 0: ternary from the first step."""
    activation_bits: Literal[8] = 8
    """Activation precision (absmax per token)."""
    eps: float = Field(default=1e-5, gt=0.0)
    """Added to the absmean scale and floor of the activation absmax."""


def weight_scale(weight: Tensor, eps: float) -> Tensor:
    """b1.58's per-tensor absmean scale (float32)."""
    return weight.detach().abs().float().mean() + eps


def ternary_codes(weight: Tensor, scale: Tensor) -> Tensor:
    """``clamp(round(w / scale), -1, 1)`` as int8 values in {-1, 0, 1}."""
    return (weight.detach().float() / scale).round().clamp(-1, 1).to(torch.int8)


def quantize_weight(weight: Tensor, eps: float) -> Tensor:
    """Ternary weight times its scale, in the weight's dtype (no gradient)."""
    scale = weight_scale(weight, eps)
    return (ternary_codes(weight, scale).float() * scale).to(weight.dtype)


def quantize_activations(x: Tensor, eps: float, bits: int = 8) -> Tensor:
    """Per-token absmax quantization to ``bits`` (dequantized; no gradient)."""
    top = 2 ** (bits - 1) - 1
    absmax = x.detach().abs().amax(dim=-1, keepdim=True).float().clamp(min=eps)
    scale = top / absmax
    return ((x.detach().float() * scale).round().clamp(-top - 1, top) / scale).to(x.dtype)


def pack_ternary(codes: Tensor) -> Tensor:
    """Pack int8 codes in {-1, 0, 1} 4 per byte (2 bits each, code + 1, low bits first)
    into a flat uint8 tensor of ``ceil(numel / 4)`` bytes."""
    flat = (codes.flatten().to(torch.int16) + 1).to(torch.uint8)
    if flat.numel() and (flat.max() > 2):
        raise ValueError("pack_ternary takes values in {-1, 0, 1}")
    flat = F.pad(flat, (0, -flat.numel() % 4)).reshape(-1, 4)
    return flat[:, 0] | (flat[:, 1] << 2) | (flat[:, 2] << 4) | (flat[:, 3] << 6)


def unpack_ternary(packed: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Inverse of :func:`pack_ternary`: int8 codes of ``shape``."""
    numel = 1
    for dim in shape:
        numel *= dim
    parts = [(packed >> shift) & 3 for shift in (0, 2, 4, 6)]
    codes = torch.stack(parts, dim=1).flatten()[:numel].to(torch.int8) - 1
    return codes.reshape(shape)


@register_kernel("bitnet", BitNetConfig)
class BitNetLinear(KernelLinear):
    """BitNet b1.58 Linear (buffer: lam, the 16-bit to ternary mix)."""

    cfg: BitNetConfig
    lam: Tensor

    def __init__(self, cfg: BitNetConfig, linear: nn.Linear, fqn: str = "") -> None:
        super().__init__(cfg, linear, fqn)
        device = self.weight.device
        self.register_buffer("lam", torch.tensor(self.lam_at(0), dtype=torch.float32, device=device))
        self.state_loaded()

    def lam_at(self, step: int) -> float:
        """The transition's mix after ``step`` optimizer steps (0: 16-bit, 1: ternary)."""
        if self.cfg.transition_steps == 0:
            return 1.0 if step >= self.cfg.transition_start else 0.0
        return min(max((step - self.cfg.transition_start) / self.cfg.transition_steps, 0.0), 1.0)

    def state_loaded(self) -> None:
        self.mix = float(self.lam)  # read in every forward: no device sync there

    @torch.no_grad()
    def on_step(self, step: int) -> None:
        lam = self.lam_at(step)
        if lam != self.mix:
            self.lam.fill_(lam)
            self.mix = float(self.lam)

    def effective_weight(self) -> Tensor:
        weight = self.full_weight()
        quantized = quantize_weight(weight, self.cfg.eps)
        return quantized if self.mix == 1.0 else (1 - self.mix) * weight + self.mix * quantized

    def forward(self, x: Tensor) -> Tensor:
        lam, eps = self.mix, self.cfg.eps
        if lam == 0.0:
            return F.linear(x, self.weight, self.bias)
        weight = straight_through(self.weight, quantize_weight(self.weight, eps))
        x_q = straight_through(x, quantize_activations(x, eps, self.cfg.activation_bits))
        if lam < 1.0:
            weight = (1 - lam) * self.weight + lam * weight
            x_q = (1 - lam) * x + lam * x_q
        return F.linear(x_q, weight, self.bias)

    def describe(self) -> str:
        start, steps = self.cfg.transition_start, self.cfg.transition_steps
        if steps == 0:
            return "ternary" if start == 0 else f"16-bit, ternary from step {start}"
        return f"16-bit to ternary over steps {start}-{start + steps}"

    def export(self) -> dict[str, Tensor]:
        """Packed ternary weight, scale, shape and bias (the transition must be finished)."""
        if self.mix != 1.0:
            raise UserError(
                f"{self.fqn or 'bitnet layer'}: the 16-bit to 1.58-bit transition is at {self.mix:.3f}, "
                "not 1; train past transition_start + transition_steps before exporting ternary weights"
            )
        weight = self.full_weight()
        scale = weight_scale(weight, self.cfg.eps)
        tensors = {
            "weight_packed": pack_ternary(ternary_codes(weight, scale)),
            "weight_scale": scale.reshape(1),
            "weight_shape": torch.tensor(list(weight.shape), dtype=torch.int64),
        }
        if self.bias is not None:
            tensors["bias"] = self.bias.detach().clone()
        return tensors


class TernaryLinear(nn.Module):
    """Inference Linear from exported b1.58 weights: unpacked ternary codes times the
    scale, with the same 8-bit activation quantizer as :class:`BitNetLinear`."""

    weight: Tensor
    weight_scale: Tensor

    def __init__(
        self,
        packed: Tensor,
        scale: Tensor,
        shape: tuple[int, int],
        bias: Tensor | None,
        eps: float = 1e-5,
        activation_bits: int = 8,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = shape
        self.eps, self.activation_bits = eps, activation_bits
        self.register_buffer("weight_packed", packed)
        self.register_buffer("weight_scale", scale.float().reshape(1))
        codes = unpack_ternary(packed, shape).float()
        self.register_buffer("weight", (codes * self.weight_scale).to(dtype), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.to(dtype), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        x_q = quantize_activations(x, self.eps, self.activation_bits)
        return F.linear(x_q, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def export_ternary(model: nn.Module) -> dict[str, Tensor]:
    """Every BitNet layer's packed weights, as ``{fqn}.weight_packed`` / ``.weight_scale`` /
    ``.weight_shape`` / ``.bias`` tensors (safetensors-ready)."""
    tensors: dict[str, Tensor] = {}
    for fqn, module in kernel_modules(model):
        if isinstance(module, BitNetLinear):
            tensors.update({f"{fqn}.{key}": value for key, value in module.export().items()})
    return tensors


def load_ternary(model: nn.Module, tensors: dict[str, Tensor], eps: float = 1e-5) -> int:
    """Replace the modules named in ``tensors`` (from :func:`export_ternary`) by
    :class:`TernaryLinear`; returns how many. The model's other weights are loaded the
    usual way."""
    fqns = sorted({key.rsplit(".", 1)[0] for key in tensors if key.endswith(".weight_packed")})
    for fqn in fqns:
        old: Any = model.get_submodule(fqn)
        dtype = old.weight.dtype if hasattr(old, "weight") else torch.float32
        shape = tuple(int(d) for d in tensors[f"{fqn}.weight_shape"].tolist())
        new = TernaryLinear(
            tensors[f"{fqn}.weight_packed"],
            tensors[f"{fqn}.weight_scale"],
            shape,  # type: ignore[arg-type]
            tensors.get(f"{fqn}.bias"),
            eps=eps,
            dtype=dtype,
        )
        parent_name, _, child = fqn.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new.to(old.weight.device))
    return len(fqns)
