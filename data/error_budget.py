"""The reader's error budget: bad samples are skipped and counted, up to a limit.

Each bad sample or shard is one :class:`SkipEvent` (shard, key, reason, detail). The
budget counts an event once per ``(shard, key)`` -- the same broken sample met again in
the next epoch is not counted again -- and stops the run with :class:`DataFormatError`
(exit 2) naming the worst shard when

- more than ``max_errors`` distinct bad samples were met, or
- more than ``max_error_rate`` of the last ``window`` samples were bad, once at least
  ``min_seen`` samples are in the window.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any, NamedTuple

from mmpretrain.errors import DataFormatError

from .skips import KEPT_EXAMPLES, LOGGED_SKIPS, MIN_SEEN_FOR_FRACTION

logger = logging.getLogger("mmpretrain.data")

RATE_WINDOW = 1000
"""The error rate is measured over this many most recent samples."""


class SkipEvent(NamedTuple):
    """One skipped sample (or a shard-level problem, with ``key == ""``) and why."""

    shard: str
    key: str
    reason: str
    detail: str = ""

    def message(self) -> str:
        where = f"{self.shard}:{self.key}" if self.key else self.shard
        return f"{where}: {self.detail or self.reason.replace('_', ' ')} (skipped; {self.reason})"


class ErrorBudget:
    """Counts skipped samples by shard and reason; raises once there are too many."""

    def __init__(
        self,
        max_errors: int = 100,
        max_error_rate: float = 0.05,
        window: int = RATE_WINDOW,
        min_seen: int = MIN_SEEN_FOR_FRACTION,
    ):
        if max_errors < 0:
            raise ValueError(f"max_errors must be >= 0, got {max_errors}")
        if not 0.0 <= max_error_rate <= 1.0:
            raise ValueError(f"max_error_rate must be between 0 and 1, got {max_error_rate}")
        self.max_errors = max_errors
        self.max_error_rate = max_error_rate
        self.min_seen = min_seen
        self.good = 0
        self.examples: list[str] = []  # the first skip messages, in order
        self._by_shard: dict[str, Counter[str]] = {}
        self._seen: set[tuple[str, str]] = set()
        self._window: deque[bool] = deque(maxlen=window)  # True = a bad sample
        self._window_bad = 0

    # ------------------------------------------------------------------ counting
    def record(self, events: Iterable[SkipEvent] = (), good: int = 0) -> None:
        """Count ``events`` (in order), then ``good`` good samples; raise if over budget."""
        for event in events:
            if (event.shard, event.key) in self._seen:
                continue  # met again in a later epoch (or by a resumed reader): counted already
            self._seen.add((event.shard, event.key))
            self._by_shard.setdefault(event.shard, Counter())[event.reason] += 1
            self._push(True)
            message = event.message()
            if len(self.examples) < KEPT_EXAMPLES:
                self.examples.append(message)
            if self.errors <= LOGGED_SKIPS:
                logger.warning(message)
                if self.errors == LOGGED_SKIPS:
                    logger.warning("further skipped samples are counted but not logged")
        for _ in range(good):
            self._push(False)
        self.good += good
        self._check()

    def _push(self, bad: bool) -> None:
        window = self._window
        if window.maxlen is not None and len(window) == window.maxlen and window[0]:
            self._window_bad -= 1
        window.append(bad)
        self._window_bad += bad

    def _check(self) -> None:
        if self.errors > self.max_errors:
            raise DataFormatError(
                f"too many bad samples: {self.errors} skipped (limit {self.max_errors}); "
                f"{self._worst()}; fix or remove it, or raise the reader's max_errors "
                "(data.shards.reader.max_errors; in a mix data.shards.mix.N.reader.max_errors)"
            )
        seen = len(self._window)
        if seen >= self.min_seen and self._window_bad > self.max_error_rate * seen:
            raise DataFormatError(
                f"too many bad samples: {self._window_bad} in the last {seen} "
                f"(limit {self.max_error_rate * 100:g}%); {self._worst()}; fix or remove it, "
                "or raise the reader's max_error_rate (data.shards.reader.max_error_rate; in a mix "
                "data.shards.mix.N.reader.max_error_rate)"
            )

    def _worst(self) -> str:
        shard, reasons = max(self._by_shard.items(), key=lambda item: (item[1].total(), item[0]))
        detail = ", ".join(
            f"{reason} {n}" for reason, n in sorted(reasons.items(), key=lambda r: (-r[1], r[0]))
        )
        return f"worst shard {shard} ({reasons.total()} errors: {detail})"

    # ------------------------------------------------------------------ reporting
    @property
    def errors(self) -> int:
        """Distinct bad samples (and bad shards) counted so far."""
        return len(self._seen)

    @property
    def by_reason(self) -> dict[str, int]:
        """Error counts by reason, sorted by reason."""
        total: Counter[str] = Counter()
        for reasons in self._by_shard.values():
            total.update(reasons)
        return dict(sorted(total.items()))

    @property
    def by_shard(self) -> dict[str, dict[str, int]]:
        """Error counts by shard, then reason."""
        return {shard: dict(sorted(reasons.items())) for shard, reasons in sorted(self._by_shard.items())}

    def as_dict(self) -> dict[str, Any]:
        """Statistics for JSON: samples, skipped, errors_by_reason, errors_by_shard, examples."""
        return {
            "samples": self.good,
            "skipped": self.errors,
            "errors_by_reason": self.by_reason,
            "errors_by_shard": self.by_shard,
            "examples": list(self.examples),
        }
