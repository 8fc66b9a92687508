"""Skip-and-count for bad input records, with a limit.

Real corpora always hold a few broken records (a truncated JSON line, a file in the wrong
encoding, a corrupt tar). Readers skip them so that one bad line does not stop a week-long
run, but they count every skip by reason and stop with :class:`DataFormatError` once there
are too many: a wrong field name or a wrong file type must fail loudly instead of silently
training on nothing. ``as_dict()`` feeds the ``skipped``/``errors_by_reason`` statistics
of ``index.json`` and ``mmpt data stats``.
"""

from __future__ import annotations

import logging
from typing import Any

from mmpretrain.errors import DataFormatError

logger = logging.getLogger("mmpretrain.data")

LOGGED_SKIPS = 5
"""How many skip messages each counter logs as warnings (the rest are only counted)."""

KEPT_EXAMPLES = 20
"""How many skip messages each counter keeps in :attr:`SkipCounter.examples`."""

MIN_SEEN_FOR_FRACTION = 100
"""The fraction limit applies only once this many records were seen (2 bad of the first
3 says nothing about a corpus)."""


class SkipCounter:
    """Counts good and skipped records; raises once too many records were bad.

    ``max_skips``: raise when more than this many records were skipped (None: no limit).
    ``max_fraction``: raise when more than this fraction of the records seen so far was
    skipped, checked once at least 100 records were seen (None: no limit).
    ``name``: what is being read, for the error message (``"corpus.jsonl"``).
    """

    def __init__(self, max_skips: int | None = 100, max_fraction: float | None = None, name: str = "data"):
        if max_skips is not None and max_skips < 0:
            raise ValueError(f"max_skips must be >= 0 or None, got {max_skips}")
        if max_fraction is not None and not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_fraction must be between 0 and 1 or None, got {max_fraction}")
        self.max_skips = max_skips
        self.max_fraction = max_fraction
        self.name = name
        self.examples: list[str] = []  # the first skip messages (at most 20), in order
        self._good = 0
        self._by_reason: dict[str, int] = {}

    # ------------------------------------------------------------------ counting
    def ok(self, n: int = 1) -> None:
        """Count ``n`` good records."""
        if n < 0:
            raise ValueError(f"ok(n) needs n >= 0, got {n}")
        self._good += n
        # The fraction can cross its threshold on a good record too: the check only starts
        # once enough records were seen, and that moment may be a good one.
        if self.max_fraction is not None and self.skipped:
            self._check_fraction()

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        """Count one bad record; raise :class:`DataFormatError` once over a limit.

        ``reason`` is a short stable slug (``"invalid_json"``), ``where`` names the place
        (``"corpus.jsonl:17"``), ``detail`` says what is wrong.
        """
        message = f"{where}: {detail or reason.replace('_', ' ')} (skipped; {reason})"
        self._by_reason[reason] = self._by_reason.get(reason, 0) + 1
        if len(self.examples) < KEPT_EXAMPLES:
            self.examples.append(message)
        count = self.skipped
        if count <= LOGGED_SKIPS:
            logger.warning(message)
            if count == LOGGED_SKIPS:
                logger.warning("%s: further skipped records are counted but not logged", self.name)
        if self.max_skips is not None and count > self.max_skips:
            raise DataFormatError(
                f"too many bad records in {self.name}: {count} skipped (limit {self.max_skips}); "
                f"first: {self.examples[0]}; raise data.max_skips or fix the data"
            )
        if self.max_fraction is not None:
            self._check_fraction()

    def _check_fraction(self) -> None:
        assert self.max_fraction is not None
        seen = self.seen
        if seen < MIN_SEEN_FOR_FRACTION or self.skipped / seen <= self.max_fraction:
            return
        raise DataFormatError(
            f"too many bad records in {self.name}: {self.skipped} of {seen} skipped "
            f"({self.skipped / seen:.1%}, limit {self.max_fraction:.1%}); first: {self.examples[0]}; "
            "fix the data (or allow a larger fraction of bad records)"
        )

    # ------------------------------------------------------------------ reporting
    @property
    def good(self) -> int:
        """Number of good records counted with :meth:`ok`."""
        return self._good

    @property
    def skipped(self) -> int:
        """Number of skipped records."""
        return sum(self._by_reason.values())

    @property
    def seen(self) -> int:
        """Good plus skipped records."""
        return self._good + self.skipped

    @property
    def by_reason(self) -> dict[str, int]:
        """Skip counts by reason (a copy, sorted by reason)."""
        return dict(sorted(self._by_reason.items()))

    def as_dict(self) -> dict[str, Any]:
        """Statistics for JSON: ``{"samples", "skipped", "errors_by_reason"}``."""
        return {"samples": self._good, "skipped": self.skipped, "errors_by_reason": self.by_reason}

    def __repr__(self) -> str:
        return f"SkipCounter(name={self.name!r}, good={self._good}, skipped={self.skipped})"
