"""Learning-rate schedules as pure functions of the step (so resuming needs only the step
and the config, which every checkpoint's run directory holds).

Continual pre-training uses them per run (per recipe stage): a stage that continues a
finished run re-warms from its own step 0 and re-decays over its own ``max_steps``; a WSD
cooldown branched from a stable-phase checkpoint is a new run with ``schedule: wsd``,
``warmup_steps: 0`` and ``decay_fraction: 1.0`` (the stable run's lr at branch step ``k``
plus ``j`` equals the branch's lr at ``j``, tested).
"""

from __future__ import annotations

import math

from mmpretrain.train.config import OptimConfig


def decay_progress(progress: float, shape: str) -> float:
    """How far (0 -> 1) a decay of ``shape`` has gone from the peak to the floor at
    ``progress`` (0 -> 1) of its length: linear, cosine, or 1 - sqrt (``sqrt``)."""
    progress = min(max(progress, 0.0), 1.0)
    if shape == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * progress))
    if shape == "sqrt":
        return math.sqrt(progress)
    return progress


def decay_start(optim: OptimConfig, max_steps: int) -> int:
    """First step of the final decay of ``wsd`` or of a ``constant`` run's cooldown
    (``max_steps`` when there is none)."""
    if optim.schedule == "constant":
        if not optim.decay_steps:
            return max_steps
        return max(max_steps - optim.decay_steps, optim.warmup_steps)
    if optim.decay_steps is not None:
        steps = optim.decay_steps
        if steps == 0:
            return max_steps
    else:
        steps = max(round(optim.decay_fraction * max_steps), 1)
    return max(max_steps - steps, optim.warmup_steps)


def lr_at(step: int, optim: OptimConfig, max_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of a ``max_steps`` run.

    Linear warmup from ``lr / warmup_steps`` to ``lr``, then ``cosine`` decay to
    ``min_lr_ratio * lr`` at the last step, ``wsd`` (warmup-stable-decay: constant, then
    a decay of ``decay_shape`` over the final ``decay_steps`` or ``decay_fraction`` of the
    run, reaching the floor at the last step), or ``constant`` (with ``decay_steps``: a
    cooldown at the end, as wsd).
    """
    peak = optim.lr
    floor = optim.lr * optim.min_lr_ratio
    if step < optim.warmup_steps:
        return peak * (step + 1) / optim.warmup_steps
    if optim.schedule == "cosine":
        span = max(max_steps - 1 - optim.warmup_steps, 1)
        progress = min((step - optim.warmup_steps) / span, 1.0)
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    start = decay_start(optim, max_steps)
    if step < start or start >= max_steps:  # stable phase, or no decay at all
        return peak
    progress = (step - start + 1) / max(max_steps - start, 1)
    return peak + (floor - peak) * decay_progress(progress, optim.decay_shape)


def describe_schedule(optim: OptimConfig, max_steps: int) -> str:
    """One line naming the schedule's phases: ``warmup 0-9, cosine 2e-03 -> 2e-04``."""
    parts = [f"warmup 0-{optim.warmup_steps - 1}"] if optim.warmup_steps else []
    floor = optim.lr * optim.min_lr_ratio
    if optim.schedule == "cosine":
        parts.append(f"cosine {optim.lr:.0e} -> {floor:.0e} at {max_steps - 1}")
        return ", ".join(parts)
    start = decay_start(optim, max_steps)
    if start > optim.warmup_steps:
        parts.append(f"constant {optim.lr:.0e} to {start - 1}")
    if start < max_steps:
        parts.append(f"{optim.decay_shape} decay {start}-{max_steps - 1} -> {floor:.0e}")
    return ", ".join(parts)
