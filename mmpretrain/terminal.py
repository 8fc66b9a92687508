"""What `mmpt` shows on the terminal: the --quiet/--verbose level of the running command,
whether a live progress bar may be drawn, and the progress of long steps.

Results go to stdout, progress to stderr. A live bar (rich) is drawn only on a terminal
(stderr is a TTY) without ``NO_COLOR`` and with a ``TERM`` other than ``dumb``; everywhere
else progress is plain lines, so logs, pipes and CI output never hold ANSI escapes.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, TextIO

PLAIN_EVERY_S = 10.0
"""Seconds between plain progress lines when the total is unknown."""

_level = 0
_quiet_stdout: object | None = None  # sys.stdout when --quiet was set


@contextlib.contextmanager
def verbosity(level: int) -> Iterator[None]:
    """Set the level of the running command (-1 --quiet, 0 normal, 1 --verbose)."""
    global _level, _quiet_stdout
    previous = (_level, _quiet_stdout)
    _level, _quiet_stdout = level, sys.stdout
    try:
        yield
    finally:
        _level, _quiet_stdout = previous


def is_quiet() -> bool:
    """True under --quiet: only results and errors are shown."""
    return _level < 0


def log_lines_wanted() -> bool:
    """Whether per-step log lines (training steps) should be printed on stdout: not under
    --quiet, unless the program itself sent stdout to a log file since (`mmpt --quiet demo`
    keeps its demo.log complete)."""
    return _level >= 0 or sys.stdout is not _quiet_stdout


def live_display_allowed(stream: TextIO | None = None) -> bool:
    """Whether a live progress bar may be drawn on ``stream`` (default stderr): a terminal,
    not --quiet, no ``NO_COLOR``, ``TERM`` not ``dumb``."""
    if _level < 0 or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def status(message: str) -> None:
    """A progress line on stderr (nothing under --quiet)."""
    if not is_quiet():
        print(message, file=sys.stderr, flush=True)


class StderrProgress:
    """Progress of one long step on stderr: a rich bar on a live terminal (removed when
    done), else a plain line at each quarter of ``total`` (every :data:`PLAIN_EVERY_S`
    seconds when the total is unknown); nothing under --quiet. A context manager."""

    def __init__(self, label: str, total: int | None = None, unit: str = "") -> None:
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self._step = max(1, (total or 0) // 4)
        self._next = self._step
        self._last_line = time.monotonic()
        self._bar: Any = None
        if live_display_allowed():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(label, total=total)

    def advance(self, n: int = 1, detail: str = "") -> None:
        """``n`` more units done; ``detail`` (a file name, ...) is shown on plain lines."""
        self.done += n
        if self._bar is not None:
            self._bar.advance(self._task, n)
            return
        if is_quiet():
            return
        if self.total:
            due = self.done >= self._next or self.done == self.total
            if due:
                self._next = self.done + self._step
        else:
            due = time.monotonic() - self._last_line >= PLAIN_EVERY_S
        if due:
            self._last_line = time.monotonic()
            count = f"{self.done}/{self.total}" if self.total else str(self.done)
            unit = f" {self.unit}" if self.unit else ""
            print(f"{self.label}: {count}{unit}{f' {detail}' if detail else ''}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Remove the bar (plain lines need no closing)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> StderrProgress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
