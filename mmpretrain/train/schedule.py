"""Learning-rate schedules as pure functions of the step (so resuming needs only the step)."""

from __future__ import annotations

import math

from mmpretrain.train.config import OptimConfig


def lr_at(step: int, optim: OptimConfig, max_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of a ``max_steps`` run.

    Linear warmup from ``lr / warmup_steps`` to ``lr``, then ``cosine`` decay to
    ``min_lr_ratio * lr`` at the last step, ``wsd`` (warmup-stable-decay: constant, then
    a linear decay over the final ``decay_fraction`` of the run), or ``constant``.
    """
    peak = optim.lr
    floor = optim.lr * optim.min_lr_ratio
    if step < optim.warmup_steps:
        return peak * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return peak
    if optim.schedule == "cosine":
        span = max(max_steps - 1 - optim.warmup_steps, 1)
        progress = min((step - optim.warmup_steps) / span, 1.0)
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    decay_steps = max(round(optim.decay_fraction * max_steps), 1)
    decay_start = max(max_steps - decay_steps, optim.warmup_steps)
    if step < decay_start:
        return peak
    progress = min((step - decay_start + 1) / max(max_steps - decay_start, 1), 1.0)
    return peak + (floor - peak) * progress
