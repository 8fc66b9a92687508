"""``unstructured``: sparse pre-training, then dense fine-tuning (SPDF).

SPDF (Thangarasa et al. 2023, "SPDF: sparse pre-training and dense fine-tuning for large
language models") pre-trains with a fraction ``sparsity`` of each matched weight matrix
pruned, then removes the mask (``densify_at``) and trains the whole matrix. Pruning is by
magnitude, per tensor (each matrix loses the same fraction).

- ``schedule: static``: the target sparsity from the first step (the mask is chosen from
  the initial weights, which for a random init is a random mask, as in SPDF).
- ``schedule: gradual``: Zhu & Gupta's cubic ramp (2017, "To prune, or not to prune"):
  ``s_t = s_f + (s_i - s_f) * (1 - (t - ramp_start) / ramp_steps) ** 3`` between
  ``ramp_start`` and ``ramp_start + ramp_steps``, the mask updated every ``update_every``
  steps.
- ``reselect: false`` (fixed masks): pruned weights are set to zero and get no gradient;
  a gradual ramp only prunes more. ``reselect: true``: every ``update_every`` steps the
  mask is chosen again from all magnitudes, and pruned weights keep receiving the dense
  (straight-through) gradient, so they can grow back.
- ``densify_at``: after this many optimizer steps the mask comes off; pruned weights start
  the dense phase at zero, so the dense model starts where the sparse one ended.

Backends: ``emulate`` only (a dense matmul with the masked weight; unstructured sparsity at
these levels is not faster on GPUs, the point is the training recipe).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmpretrain.kernels.base import KernelConfig, KernelLinear, register_kernel
from mmpretrain.kernels.sparse24 import _MaskedWeight


class UnstructuredConfig(KernelConfig):
    """Unstructured magnitude sparsity for sparse pre-training then dense fine-tuning (SPDF)."""

    name: Literal["unstructured"]
    sparsity: float = Field(default=0.5, gt=0.0, lt=1.0)
    """Fraction of each matched weight matrix pruned (SPDF uses 0.5-0.75)."""
    schedule: Literal["static", "gradual"] = "static"
    """`static`: the target from the start; `gradual`: cubic ramp from `initial_sparsity`."""
    initial_sparsity: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Sparsity before and at the start of a gradual ramp."""
    ramp_start: int = Field(default=0, ge=0)
    """Optimizer step at which the gradual ramp starts."""
    ramp_steps: int = Field(default=1000, ge=1)
    """Length of the gradual ramp in optimizer steps."""
    update_every: int = Field(default=100, ge=1)
    """Mask update period (ramp increments and, with `reselect`, re-selection)."""
    reselect: bool = False
    """Re-select masks from all magnitudes every `update_every` steps (pruned weights get
    straight-through gradients); false: fixed masks, pruned weights stay zero."""
    densify_at: int | None = Field(default=None, ge=1)
    """After this many optimizer steps the mask is removed (dense fine-tuning); null: never."""

    @model_validator(mode="after")
    def _levels(self) -> UnstructuredConfig:
        if self.schedule == "gradual" and self.initial_sparsity > self.sparsity:
            raise ValueError(f"initial_sparsity {self.initial_sparsity} exceeds sparsity {self.sparsity}")
        return self


def target_sparsity(cfg: UnstructuredConfig, step: int) -> float:
    """The sparsity the schedule asks for after ``step`` optimizer steps."""
    if cfg.schedule == "static":
        return cfg.sparsity
    progress = min(max((step - cfg.ramp_start) / cfg.ramp_steps, 0.0), 1.0)
    return cfg.sparsity + (cfg.initial_sparsity - cfg.sparsity) * (1.0 - progress) ** 3


def magnitude_mask(weight: Tensor, sparsity: float, keep_pruned: Tensor | None = None) -> Tensor:
    """Bool mask pruning ``round(sparsity * numel)`` smallest magnitudes; ``keep_pruned``
    (a previous mask) forces its pruned entries to stay pruned."""
    scores = weight.detach().abs().float().flatten()
    if keep_pruned is not None:
        scores = torch.where(keep_pruned.flatten(), scores, torch.full_like(scores, -1.0))
    pruned = round(sparsity * scores.numel())
    mask = torch.ones_like(scores, dtype=torch.bool)
    if pruned:
        mask[scores.topk(pruned, largest=False).indices] = False
    return mask.reshape(weight.shape)


@register_kernel("unstructured", UnstructuredConfig)
class UnstructuredLinear(KernelLinear):
    """Magnitude-pruned Linear (buffers: mask, active, sparsity)."""

    cfg: UnstructuredConfig
    mask: Tensor
    active: Tensor
    sparsity: Tensor

    def __init__(self, cfg: UnstructuredConfig, linear: nn.Linear, fqn: str = "") -> None:
        super().__init__(cfg, linear, fqn)
        weight = self.full_weight()
        start = target_sparsity(cfg, 0)
        self.register_buffer("mask", magnitude_mask(weight, start))
        self.register_buffer("active", torch.tensor(True, device=weight.device))
        self.register_buffer("sparsity", torch.tensor(start, dtype=torch.float32, device=weight.device))
        self.state_loaded()
        if not cfg.reselect:
            self.assign_weight(weight * self.mask)

    def state_loaded(self) -> None:
        self.sparse_now = bool(self.active)

    @torch.no_grad()
    def densify(self) -> None:
        """Remove the mask for good: pruned weights start the dense phase at zero."""
        if self.sparse_now:
            self.assign_weight(self.full_weight() * self.mask)
            self.active.fill_(False)
            self.sparse_now = False

    @torch.no_grad()
    def on_step(self, step: int) -> None:
        cfg = self.cfg
        if cfg.densify_at is not None and step >= cfg.densify_at:
            self.densify()
            return
        if not self.sparse_now:
            return
        target = target_sparsity(cfg, step)
        ramping = cfg.schedule == "gradual" and cfg.ramp_start < step <= cfg.ramp_start + cfg.ramp_steps
        due = (step - cfg.ramp_start) % cfg.update_every == 0 or step == cfg.ramp_start + cfg.ramp_steps
        if not ((ramping or cfg.reselect) and due):
            return
        weight = self.full_weight()
        keep = None if cfg.reselect else self.mask
        self.mask.copy_(magnitude_mask(weight, target, keep))
        self.sparsity.fill_(target)
        if not cfg.reselect:
            self.assign_weight(weight * self.mask)

    def effective_weight(self) -> Tensor:
        weight = self.full_weight()
        return weight * self.mask if self.sparse_now else weight

    def forward(self, x: Tensor) -> Tensor:
        if not self.sparse_now:
            return F.linear(x, self.weight, self.bias)
        if self.cfg.reselect:  # straight-through: pruned weights keep learning
            weight = _MaskedWeight.apply(self.weight, self.mask, 0.0)
        else:
            weight = self.weight * self.mask
        return F.linear(x, weight, self.bias)

    def describe(self) -> str:
        cfg = self.cfg
        text = f"{cfg.schedule} {cfg.sparsity:.0%}, {'re-selected' if cfg.reselect else 'fixed'} masks"
        return text + (f", dense after step {cfg.densify_at}" if cfg.densify_at is not None else "")
