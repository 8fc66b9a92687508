"""``sparse24``: 2:4 semi-structured sparse training (STE, SR-STE, S-STE).

In every group of 4 consecutive weights along the input dimension at most 2 are non-zero
(the pattern NVIDIA Ampere+ tensor cores run at twice the dense rate). The dense master
weight keeps training; the forward pass uses its 2:4 projection:

- ``ste``: keep the 2 largest magnitudes of each group (a ``mask`` buffer, recomputed
  from ``|w|`` every ``update_every`` optimizer steps); the gradient reaches every weight
  unchanged (straight-through estimator).
- ``sr_ste`` (Zhou et al. 2021, "Learning N:M fine-grained structured sparse neural
  networks from scratch"): as ``ste``, plus ``decay * (1 - mask) * w`` added to the
  gradient of the weights the mask prunes, which pulls them towards zero and steadies the
  mask. The term is added on each backward pass (per micro-batch under grad_accum).
- ``s_ste`` (Hu et al. 2024, "S-STE: continuous pruning function for efficient 2:4 sparse
  pre-training"): a continuous projection computed from the current weights in every
  forward pass: each group is soft-thresholded by its 3rd-largest magnitude
  (``sign(w) * max(|w| - t, 0)``), then multiplied by a per-tensor scale ``beta`` fitted
  once, when the sparse phase starts, to minimize ``||w - beta * S(w)||^2``; the gradient
  passes straight through (times ``beta``). Its ``mask`` buffer is the pattern of the last
  refresh (for tables and checks); the forward pass does not need it.

Phases: dense for the first ``dense_warmup_steps`` optimizer steps, then sparse, then dense
again from ``dense_finetune_from`` on (the weight is first set to its sparse projection,
so the dense model starts exactly where the sparse one ended).

Backends: ``cuda`` runs the forward matmul on a semi-structured sparse weight
(``torch.sparse.to_sparse_semi_structured``: compute capability 8.0+, fp16/bf16 compute,
both weight dims multiples of 64; the weight is compressed in each forward pass, the
backward matmuls are dense); anything else (fp32 compute, another device) uses
``emulate``: a dense matmul with the masked weight, the same numbers.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmpretrain.errors import ConfigError
from mmpretrain.kernels.base import KernelConfig, KernelLinear, register_kernel


class Sparse24Config(KernelConfig):
    """2:4 semi-structured sparsity (STE / SR-STE / S-STE), optional dense warm-up and fine-tune."""

    name: Literal["sparse24"]
    variant: Literal["ste", "sr_ste", "s_ste"] = "sr_ste"
    """`ste`: hard 2:4 mask, dense straight-through gradient; `sr_ste`: plus a decay on the
    pruned weights' gradient; `s_ste`: soft-thresholding with a fixed per-tensor rescale."""
    update_every: int = Field(default=1, ge=1)
    """Recompute the mask from the weight magnitudes every this many optimizer steps."""
    decay: float = Field(default=2e-4, ge=0.0)
    """SR-STE's lambda: `decay * (1 - mask) * w` is added to the gradient (sr_ste only)."""
    dense_warmup_steps: int = Field(default=0, ge=0)
    """Train dense for this many optimizer steps before the first mask is applied."""
    dense_finetune_from: int | None = Field(default=None, ge=1)
    """From this optimizer step on the mask is off (dense fine-tuning); null: sparse to the end."""

    @model_validator(mode="after")
    def _phases(self) -> Sparse24Config:
        if self.dense_finetune_from is not None and self.dense_finetune_from <= self.dense_warmup_steps:
            raise ValueError(
                f"dense_finetune_from ({self.dense_finetune_from}) must come after "
                f"dense_warmup_steps ({self.dense_warmup_steps})"
            )
        return self


# ---------------------------------------------------------------------------- pattern helpers


def mask_24(weight: Tensor) -> Tensor:
    """Bool mask keeping the 2 largest magnitudes of each group of 4 along the last dim."""
    rows, cols = weight.shape
    groups = weight.detach().abs().float().reshape(rows, cols // 4, 4)
    keep = groups.topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(rows, cols)


def soft_threshold_24(weight: Tensor) -> Tensor:
    """S-STE's projection: each group of 4 minus its 3rd-largest magnitude, clipped at 0."""
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // 4, 4)
    threshold = groups.detach().abs().topk(3, dim=-1).values[..., 2:3]
    return (groups.sign() * (groups.abs() - threshold).clamp(min=0)).reshape(rows, cols)


def fitted_scale(weight: Tensor, projected: Tensor) -> Tensor:
    """``beta`` minimizing ``||weight - beta * projected||^2`` (1 when the projection is 0)."""
    w, p = weight.double().flatten(), projected.double().flatten()
    denominator = torch.dot(p, p)
    if denominator == 0:
        return torch.ones((), dtype=torch.float32, device=weight.device)
    return (torch.dot(w, p) / denominator).float()


def is_24_sparse(weight: Tensor) -> bool:
    """Whether every group of 4 along the last dim has at most 2 non-zeros."""
    rows, cols = weight.shape
    if cols % 4:
        return False
    nonzero = (weight.reshape(rows, cols // 4, 4) != 0).sum(-1)
    return bool((nonzero <= 2).all())


def check_24_pattern(weight: Tensor, name: str = "weight") -> None:
    """Raise ``ValueError`` naming ``name`` and the first bad group unless ``weight`` is 2:4."""
    rows, cols = weight.shape
    if cols % 4:
        raise ValueError(f"{name}: {cols} input features is not a multiple of 4")
    nonzero = (weight.reshape(rows, cols // 4, 4) != 0).sum(-1)
    bad = (nonzero > 2).nonzero()
    if len(bad):
        row, group = bad[0].tolist()
        raise ValueError(
            f"{name} is not 2:4 sparse: row {row}, columns {4 * group}-{4 * group + 3} have "
            f"{int(nonzero[row, group])} non-zeros ({len(bad)} such groups)"
        )


# ---------------------------------------------------------------------------- autograd


class _MaskedWeight(torch.autograd.Function):
    """``w * mask`` forward; backward: the gradient to every weight, plus ``decay * ~mask * w``."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, mask: Tensor, decay: float) -> Tensor:
        ctx.save_for_backward(weight, mask)
        ctx.decay = decay
        return weight * mask

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        weight, mask = ctx.saved_tensors
        if ctx.decay:
            grad = grad + ctx.decay * (~mask) * weight
        return grad, None, None


class _SemiStructuredMatmul(torch.autograd.Function):
    """``x @ w.T`` with ``w`` compressed to a semi-structured sparse tensor (forward only);
    dense backward matmuls. Inputs are already in the fp16/bf16 compute dtype."""

    @staticmethod
    def forward(ctx: Any, x2d: Tensor, weight: Tensor) -> Tensor:
        sparse = torch.sparse.to_sparse_semi_structured(weight)
        ctx.save_for_backward(x2d, weight)
        return F.linear(x2d, sparse)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x2d, weight = ctx.saved_tensors
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_w = grad.t() @ x2d if ctx.needs_input_grad[1] else None
        return grad_x, grad_w


# ---------------------------------------------------------------------------- the kind


@register_kernel("sparse24", Sparse24Config)
class Sparse24Linear(KernelLinear):
    """2:4 sparse Linear over the dense master weight (buffers: mask, active, scale)."""

    backends = ("emulate", "cuda")
    cfg: Sparse24Config
    mask: Tensor
    active: Tensor
    scale: Tensor

    def __init__(self, cfg: Sparse24Config, linear: nn.Linear, fqn: str = "") -> None:
        if linear.in_features % 4:
            raise ConfigError(
                f"kernel sparse24 at {fqn or 'a Linear'}: {linear.in_features} input features is not a "
                "multiple of 4; exclude this module from the rule"
            )
        super().__init__(cfg, linear, fqn)
        weight = self.full_weight()
        self.register_buffer("mask", mask_24(weight))
        self.register_buffer("active", torch.tensor(cfg.dense_warmup_steps == 0, device=weight.device))
        self.register_buffer("scale", torch.ones((), dtype=torch.float32, device=weight.device))
        self.state_loaded()
        if self.sparse_now:
            self._start_sparse(weight)

    @classmethod
    def cuda_support(cls, weight: Tensor) -> tuple[bool, str]:
        if not weight.is_cuda:
            return False, "the weight is not on a CUDA device"
        if not hasattr(torch.sparse, "to_sparse_semi_structured"):
            return False, "this torch has no torch.sparse.to_sparse_semi_structured"
        major, minor = torch.cuda.get_device_capability(weight.device)
        if (major, minor) < (8, 0):
            return False, f"semi-structured sparse matmuls need compute capability 8.0+, not {major}.{minor}"
        if weight.shape[0] % 64 or weight.shape[1] % 64:
            return (
                False,
                f"semi-structured sparse matmuls need weight dims divisible by 64, not {tuple(weight.shape)}",
            )
        return True, ""

    # ------------------------------------------------------------------ state

    def state_loaded(self) -> None:
        self.sparse_now = bool(self.active)  # read in every forward: no device sync there

    def _set_active(self, active: bool) -> None:
        self.active.fill_(active)
        self.sparse_now = active

    def _start_sparse(self, weight: Tensor) -> None:
        self.mask.copy_(mask_24(weight))
        if self.cfg.variant == "s_ste":
            self.scale.copy_(fitted_scale(weight, soft_threshold_24(weight.float())))

    @torch.no_grad()
    def on_step(self, step: int) -> None:
        cfg = self.cfg
        finetune = cfg.dense_finetune_from is not None and step >= cfg.dense_finetune_from
        if finetune:
            if self.sparse_now:  # the dense fine-tune starts from the sparse weights
                self.assign_weight(self.effective_weight())
                self._set_active(False)
            return
        if step < cfg.dense_warmup_steps:
            return
        weight = self.full_weight()
        if not self.sparse_now:
            self._set_active(True)
            self._start_sparse(weight)
        elif (step - cfg.dense_warmup_steps) % cfg.update_every == 0:
            self.mask.copy_(mask_24(weight))

    # ------------------------------------------------------------------ numerics

    def sparse_weight(self, weight: Tensor) -> Tensor:
        """The 2:4 weight the forward pass uses (differentiable in ``weight``)."""
        if self.cfg.variant == "s_ste":
            projected = soft_threshold_24(weight)
            scale = self.scale.to(weight.dtype)
            return scale * (weight + (projected - weight).detach())
        decay = self.cfg.decay if self.cfg.variant == "sr_ste" else 0.0
        return _MaskedWeight.apply(weight, self.mask, decay)

    def effective_weight(self) -> Tensor:
        weight = self.full_weight()
        if not self.sparse_now:
            return weight
        if self.cfg.variant == "s_ste":
            return (self.scale * soft_threshold_24(weight.float())).to(weight.dtype)
        return weight * self.mask

    def forward(self, x: Tensor) -> Tensor:
        if not self.sparse_now:
            return F.linear(x, self.weight, self.bias)
        weight = self.sparse_weight(self.weight)
        if self.backend == "cuda":
            dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else weight.dtype
            if dtype in (torch.float16, torch.bfloat16):
                return self._semi_structured_forward(x, weight, dtype)
        return F.linear(x, weight, self.bias)

    def _semi_structured_forward(self, x: Tensor, weight: Tensor, dtype: torch.dtype) -> Tensor:
        with torch.autocast("cuda", enabled=False):
            x2d = x.reshape(-1, x.shape[-1]).to(dtype)
            out = _SemiStructuredMatmul.apply(x2d, weight.to(dtype))
            if self.bias is not None:
                out = out + self.bias.to(dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def describe(self) -> str:
        cfg = self.cfg
        text = f"{cfg.variant}, mask every {cfg.update_every} steps"
        if cfg.dense_warmup_steps:
            text += f", dense for {cfg.dense_warmup_steps} steps"
        if cfg.dense_finetune_from is not None:
            text += f", dense after step {cfg.dense_finetune_from}"
        return text
