"""Metrics: one JSON object per logged step in metrics.jsonl, TensorBoard scalars, a log
line per logged step on stdout (none under --quiet) and a rich progress bar on stderr when
it is a live terminal (:func:`mmpretrain.terminal.live_display_allowed`)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from mmpretrain import terminal

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (an unfinished last line is ignored)."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a crash mid-write
    return records


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Drop records after ``last_step``: a resumed run re-logs the steps a crash lost."""
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= last_step]
    text = "".join(json.dumps(r) + "\n" for r in kept)
    (run_dir / METRICS_FILE).write_text(text, encoding="utf-8")


def _format(record: dict[str, Any]) -> str:
    parts = [f"step {record['step']}"]
    for key, fmt in (
        ("loss", ".4f"),
        ("lr", ".2e"),
        ("grad_norm", ".3f"),
        ("tokens_per_s", ",.0f"),
        ("packing_efficiency", ".3f"),
    ):
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            parts.append(f"{key} {value:{fmt}}")
    return "  ".join(parts)


class MetricsLogger:
    """Writes metrics of the main process; a context manager that closes its files."""

    def __init__(
        self, run_dir: Path, total_steps: int, start_step: int, enabled: bool = True, tensorboard: bool = True
    ) -> None:
        self.enabled = enabled
        self._file = (run_dir / METRICS_FILE).open("a", encoding="utf-8") if enabled else None
        self._tb: Any = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=start_step + 1)
        self._lines = enabled and terminal.log_lines_wanted()
        self._progress: Any = None
        if enabled and terminal.live_display_allowed():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.description}"),
                console=Console(stderr=True),
                # log lines printed to a terminal stdout go above the bar; a redirected
                # stdout (a file, a pipe) keeps them
                redirect_stdout=terminal.live_display_allowed(sys.stdout),
            )
            self._task = self._progress.add_task("", total=total_steps, completed=start_step)
            self._progress.start()

    def log(self, record: dict[str, Any]) -> None:
        """Record one step's metrics (``step`` is required)."""
        if not self.enabled:
            return
        assert self._file is not None
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"train/{key}", value, record["step"])
        if self._progress is not None:
            compact = f"loss {record.get('loss', math.nan):.4f}  {record.get('tokens_per_s', 0):,.0f} tok/s"
            self._progress.update(self._task, completed=record["step"], description=compact)
        if self._lines:
            print(_format(record), flush=True)

    def advance(self, step: int) -> None:
        """Move the progress bar without logging (steps between log lines)."""
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def message(self, text: str) -> None:
        """A line for the user on stdout (above the progress bar on a terminal); none
        under --quiet."""
        if self._lines:
            print(text, flush=True)

    def close(self) -> None:
        """Flush and close files and the progress bar."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
