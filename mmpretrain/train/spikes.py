"""Loss-spike detection: each logged loss as a z-score against the previous ones.

A spike is a logged loss more than ``threshold`` standard deviations above the mean of
the last ``window`` logged losses (once ``min_history`` are there). The loop logs
``loss_z`` and the cumulative ``loss_spikes`` with every metrics record and prints a
warning line per spike; it never changes the run (a spike is information: lower the
learning rate, look at the batch, or roll back to an earlier checkpoint by hand).

A resumed run replays the losses already in ``metrics.jsonl`` (truncated to the resumed
step), so its z-scores and counts equal an uninterrupted run's.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

WINDOW = 50
"""Logged losses the mean and standard deviation are taken over."""
THRESHOLD = 4.0
"""A loss this many standard deviations above the window's mean is a spike."""
MIN_HISTORY = 10
"""Logged losses needed before anything is scored (early training moves too fast)."""


class LossSpikeDetector:
    """Z-scores of logged losses over a sliding window; counts and reports spikes."""

    def __init__(
        self,
        window: int = WINDOW,
        threshold: float = THRESHOLD,
        min_history: int = MIN_HISTORY,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        if window < 2 or min_history < 2 or min_history > window:
            raise ValueError(f"need 2 <= min_history <= window, got {min_history} and {window}")
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        self.threshold = threshold
        self.min_history = min_history
        self.spikes = 0
        self._losses: deque[float] = deque(maxlen=window)
        self._warn = warn

    def z_score(self, loss: float) -> float:
        """``(loss - mean) / std`` of the window (0 until ``min_history`` losses, or when
        the window is flat)."""
        if len(self._losses) < self.min_history:
            return 0.0
        mean = math.fsum(self._losses) / len(self._losses)
        variance = math.fsum((x - mean) ** 2 for x in self._losses) / len(self._losses)
        std = math.sqrt(variance)
        return (loss - mean) / std if std > 1e-12 * max(abs(mean), 1.0) else 0.0

    def update(self, step: int, loss: float) -> dict[str, float | int]:
        """Score ``loss`` (logged at ``step``), then add it to the window. Returns the
        metrics ``loss_z`` and ``loss_spikes``. A non-finite loss (a skipped step) is
        neither scored nor added."""
        if not math.isfinite(loss):
            return {"loss_z": 0.0, "loss_spikes": self.spikes}
        z = self.z_score(loss)
        if z > self.threshold:
            self.spikes += 1
            if self._warn is not None:
                mean = math.fsum(self._losses) / len(self._losses)
                self._warn(
                    f"warning: loss spike at step {step}: loss {loss:.4f} is {z:.1f} standard "
                    f"deviations above the mean {mean:.4f} of the last {len(self._losses)} logged "
                    f"losses ({self.spikes} so far)"
                )
        self._losses.append(loss)
        return {"loss_z": z, "loss_spikes": self.spikes}

    def replay(self, losses: Iterable[float]) -> None:
        """Feed earlier losses without warnings (a resumed run's history)."""
        warn, self._warn = self._warn, None
        try:
            for i, loss in enumerate(losses):
                self.update(i, loss)
        finally:
            self._warn = warn

    @classmethod
    def for_run(cls, run_dir: Path, warn: Callable[[str], None] | None = None) -> LossSpikeDetector:
        """A detector primed with the losses already logged in ``run_dir/metrics.jsonl``."""
        from mmpretrain.train.metrics import read_metrics

        detector = cls(warn=warn)
        detector.replay(float(r["loss"]) for r in read_metrics(run_dir) if "loss" in r)
        return detector
