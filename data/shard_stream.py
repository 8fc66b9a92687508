"""Shard lists and shard streams for the reader: patterns in, ``(index, sample or skip)`` out.

:func:`expand_shards` turns paths, globs, brace patterns, directories and webdataset URLs
(``pipe:COMMAND``, ``https://...``) into a shard list; :func:`shard_counts` gives each
shard's number of samples (from ``index.json`` or a counting pass); :func:`shard_outcomes`
streams one shard as ``(local index, Sample | SkipEvent)``, bad samples included, so that
every sample -- good or bad -- has a fixed place in the reader's global order.

Local shards go through :func:`~mmpretrain.data.shard_io.iter_shard_samples`; URLs are
opened with webdataset's ``gopen`` and parsed by the same safe tar code (never extracted,
nothing unpickled). A ``pipe:`` URL runs its command in a shell, as webdataset does: it
comes from the user's own config, never from a shard.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from collections.abc import Generator, Sequence
from contextlib import closing
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from mmpretrain.errors import DataFormatError

from .error_budget import SkipEvent
from .shard_io import (
    _CORRUPT_ERRORS,
    MAX_MEMBER_BYTES,
    MAX_SAMPLE_BYTES,
    _decompressed,
    _finish_group,
    _iter_groups,
    _TailReader,
    iter_shard_samples,
)
from .skips import SkipCounter
from .types import Sample

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
"""Files a directory entry in a shard list contributes."""

TAR_LEVEL_REASONS = ("corrupt_tar", "shard_unreadable")
"""Skip reasons that concern a whole shard (their event has no sample key)."""

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # pipe:, https:, gs:, ... (not a drive letter)
_GLOB = re.compile(r"[*?\[]")


def is_url(shard: str) -> bool:
    return bool(_URL.match(shard)) and not shard.startswith("file:")


def expand_shards(patterns: str | Sequence[str]) -> list[str]:
    """Expand shard patterns into the reader's shard list (see the module docstring).

    Braces expand everywhere (webdataset's ``braceexpand``); local globs and directories
    expand to files; duplicates are dropped. A local path that does not exist or a pattern
    that matches nothing raises :class:`DataFormatError` naming it.
    """
    import braceexpand  # a webdataset dependency

    local: set[str] = set()
    urls: list[str] = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        for entry in braceexpand.braceexpand(pattern):
            if is_url(entry):
                if entry not in urls:
                    urls.append(entry)
                continue
            path = os.path.expanduser(entry.removeprefix("file://").removeprefix("file:"))
            if _GLOB.search(path):
                matches = [p for p in glob.glob(path) if os.path.isfile(p)]
                if not matches:
                    raise DataFormatError(f"shard pattern {entry!r} matches no files; check the path")
            elif os.path.isdir(path):
                matches = [str(p) for p in Path(path).iterdir() if p.name.endswith(SHARD_SUFFIXES)]
                if not matches:
                    raise DataFormatError(f"shard directory {path} holds no {'/'.join(SHARD_SUFFIXES)} files")
            elif os.path.isfile(path):
                matches = [path]
            else:
                raise DataFormatError(f"shard not found: {path} (from {pattern!r})")
            local.update(str(Path(p)) for p in matches)
    return sorted(local) + urls


_COUNTS: dict[tuple[str, int, int], int] = {}  # counted shards: (shard, size, mtime) -> samples


def shard_counts(shards: Sequence[str]) -> list[int]:
    """Positions (samples, good or bad) of each shard: from ``index.json`` or a counting pass.

    An ``index.json`` in a local shard's directory (``{"shards": [{"path": name, "samples":
    n, "bytes": b}, ...]}``; ``file`` is accepted for ``path``) is used when its byte size
    (if given) matches the file. Counted shards are cached for the life of the process.
    """
    indexes: dict[str, dict[str, tuple[int, int | None]]] = {}
    counts = []
    for shard in shards:
        key = (shard, 0, 0)
        if not is_url(shard):
            stat = os.stat(shard)
            key = (shard, stat.st_size, stat.st_mtime_ns)
            directory = os.path.dirname(shard) or "."
            if directory not in indexes:
                indexes[directory] = _read_index(os.path.join(directory, "index.json"))
            entry = indexes[directory].get(os.path.basename(shard))
            if entry is not None and entry[1] in (None, stat.st_size):
                counts.append(entry[0])
                continue
        if key not in _COUNTS:
            _COUNTS[key] = _count_shard(shard)
        counts.append(_COUNTS[key])
    return counts


def _read_index(path: str) -> dict[str, tuple[int, int | None]]:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)["shards"]
        out = {}
        for entry in entries:
            name = os.path.basename(entry.get("path", entry.get("file")))
            samples, size = entry["samples"], entry.get("bytes")
            if not isinstance(samples, int) or samples < 0 or not isinstance(size, (int, type(None))):
                raise ValueError(f"bad samples/bytes in {entry!r}")
            out[name] = (samples, size)
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataFormatError(
            f"cannot use {path}: {exc}; fix it or delete it (shards are then counted)"
        ) from None


def _count_shard(shard: str) -> int:
    count = 0
    for local, outcome in shard_outcomes(shard):
        if isinstance(outcome, SkipEvent) and outcome.reason == "shard_unreadable":
            raise DataFormatError(f"cannot read shard {shard}: {outcome.detail}")
        count = local + 1
    return count


class _Recorder(SkipCounter):
    """Collects the skips of one shard as events, to be counted once by their owner."""

    def __init__(self, shard: str):
        super().__init__(max_skips=None, name=shard)
        self.shard = shard
        self.events: list[SkipEvent] = []

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        key = where.removeprefix(f"{self.shard}:") if where != self.shard else ""
        self.events.append(SkipEvent(self.shard, key, reason, detail))

    def drain(self) -> list[SkipEvent]:
        events, self.events = self.events, []
        return events


def shard_outcomes(shard: str) -> Generator[tuple[int, Sample | SkipEvent], None, None]:
    """``(local index, sample or skip)`` in tar order; a shard-level skip comes last, at the
    index of the sample where the shard broke (it takes no index of its own)."""
    recorder = _Recorder(shard)
    samples = _url_samples(shard, recorder) if is_url(shard) else _local_samples(shard, recorder)
    local = 0
    with closing(samples):
        for sample in samples:
            for event in recorder.drain():  # bad samples before this one, in tar order
                yield local, event
                local += 1
            yield local, sample
            local += 1
        for event in recorder.drain():
            yield local, event
            local += event.reason not in TAR_LEVEL_REASONS


def _local_samples(shard: str, recorder: _Recorder) -> Generator[Sample, None, None]:
    try:
        yield from iter_shard_samples(shard, recorder, count_ok=False)
    except DataFormatError as exc:  # vanished or unreadable since it was listed
        recorder.skip("shard_unreadable", shard, str(exc))


class _SourceError(OSError):
    """The command or download behind a URL failed (not a problem of the tar itself)."""


class _Rewindable:
    """A forward-only stream (a pipe) that can seek back to 0 while only its start was
    read: ``_decompressed`` sniffs the compression magic and rewinds."""

    _KEEP = 4096

    def __init__(self, stream: Any, url: str):
        self._stream = stream
        self._url = url
        self._start: bytes | None = b""  # bytes read from the beginning, while rewindable
        self._replay = b""

    def read(self, size: int = -1) -> bytes:
        if self._replay:
            n = len(self._replay) if size < 0 else min(size, len(self._replay))
            out, self._replay = self._replay[:n], self._replay[n:]
            return out + self._read(-1) if size < 0 else out  # a short read is allowed
        return self._read(size)

    def _read(self, size: int) -> bytes:
        try:
            data: bytes = self._stream.read(size)
        except OSError as exc:
            raise _SourceError(_source_failure(self._stream, self._url, exc)) from None
        if self._start is not None:
            self._start += data
            if len(self._start) > self._KEEP:
                self._start = None
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if offset or whence or self._start is None:
            raise OSError("a URL stream can only rewind to its start")
        self._replay = self._start
        return 0

    def __enter__(self) -> _Rewindable:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _source_failure(stream: Any, url: str, exc: BaseException | None) -> str:
    proc = getattr(stream, "proc", None)  # webdataset's Pipe
    if proc is not None and proc.returncode not in (None, 0):
        return f"command `{url.removeprefix('pipe:')}` failed with exit status {proc.returncode}"
    return f"cannot read {url}: {exc}"


def _url_samples(url: str, recorder: _Recorder) -> Generator[Sample, None, None]:
    """The samples of a webdataset URL (``pipe:``, ``https:``, ...), through the same safe
    tar parser as local shards."""
    from webdataset.gopen import gopen

    try:
        stream = gopen(url, "rb")
    except Exception as exc:  # ValueError for an unknown scheme, OSError from Popen
        recorder.skip("shard_unreadable", url, f"cannot open {url}: {exc}")
        return
    problem: tuple[str, str] | None = None
    complete = False
    try:
        with _decompressed(cast(BinaryIO, _Rewindable(stream, url))) as data:
            tail = _TailReader(data)
            with tarfile.open(fileobj=cast("IO[bytes]", tail), mode="r|") as tar:
                for group in _iter_groups(tar, tail, MAX_MEMBER_BYTES, MAX_SAMPLE_BYTES):
                    # _finish_group only formats the path into messages: the URL names it.
                    sample = _finish_group(group, cast(Path, url), recorder, False)
                    if sample is not None:
                        yield sample
        complete = True
    except _SourceError as exc:
        problem, complete = ("shard_unreadable", str(exc)), True
    except _CORRUPT_ERRORS as exc:
        problem, complete = ("corrupt_tar", f"truncated or corrupt tar: {exc}"), True
    finally:
        failure = _close(stream, url, kill=not complete)
    if failure is not None:  # a failed command explains a broken tar better
        problem = ("shard_unreadable", failure)
    if problem is not None:
        recorder.skip(problem[0], url, problem[1])


def _close(stream: Any, url: str, kill: bool) -> str | None:
    """Close a URL stream; the failure of its command, if any (ignored when ``kill``)."""
    proc = getattr(stream, "proc", None)
    if kill and proc is not None:
        proc.kill()  # stopped early: do not wait for the rest of a download
    try:
        stream.close()
    except OSError as exc:
        return None if kill else _source_failure(stream, url, exc)
    return None
