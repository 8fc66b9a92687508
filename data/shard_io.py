"""Minimal, safe tar I/O for our webdataset shard format (docs/data-format.md).

:class:`ShardWriter` writes samples into ``prefix-000000.tar``, ``prefix-000001.tar``, ...
with deterministic tar headers, so the same samples always give the same bytes (shards can
be hashed and compared). :func:`iter_shard_samples` streams one shard back into
:class:`Sample` objects.

Shards can come from anywhere, so the reader never extracts to disk (no path traversal),
never follows links, reads each member's bytes only up to a size limit, and decodes only
``KEY.json`` (strict JSON) -- media stays raw bytes for the encoders, and nothing is ever
unpickled. Every problem with one sample is skipped and counted in a :class:`SkipCounter`.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO, cast

from mmpretrain.errors import DataFormatError

from .shard_schema import (
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    SCHEMA_VERSION,
    parse_sample_json,
    sample_from_json,
    validate_sample_json,
)
from .skips import SkipCounter
from .types import Sample, Segment

MAX_MEMBER_BYTES = 64 * 1024 * 1024
"""Largest tar member the reader loads (and the writer writes), in bytes."""

MAX_SAMPLE_BYTES = 256 * 1024 * 1024
"""Largest total size of one sample's members the reader holds in memory, in bytes."""

_MEDIA_MEMBER = re.compile(r"^\d+\.(" + "|".join(IMAGE_EXTENSIONS + AUDIO_EXTENSIONS) + r")$")
_BLOCK = tarfile.BLOCKSIZE
# Errors a damaged (truncated, bit-flipped, badly compressed) shard raises while streaming.
_CORRUPT_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)


def _check_key(key: str) -> None:
    """A key the reader can group by, and that cannot escape a directory when extracted."""
    if not isinstance(key, str) or not key:
        raise DataFormatError(f"sample key must be a non-empty string, got {key!r}")
    last = key.rsplit("/", 1)[-1]
    problem = None
    if "." in last:
        problem = "its last path component contains '.' (webdataset splits member names at the first dot)"
    elif key.startswith("/") or ".." in key or "\\" in key or "\0" in key:
        problem = "it is absolute or contains '..', '\\' or NUL"
    elif "" in key.split("/"):
        problem = "it has an empty path component"
    if problem:
        raise DataFormatError(f"sample key {key!r} cannot be written: {problem}; use e.g. 'shard-000/17'")


def _media_ext(key: str, index: int, seg: Segment) -> str:
    """The file extension of a media segment: from ``seg.member`` or ``seg.meta['ext']``."""
    ext: object = None
    if seg.member:
        ext = seg.member.rsplit(".", 1)[-1] if "." in seg.member else None
    if ext is None:
        ext = seg.meta.get("ext")
    if not isinstance(ext, str) or not ext:
        raise DataFormatError(
            f"sample {key!r} segments[{index}]: {seg.kind} segment has no file extension; "
            "set Segment.member (e.g. '0.jpg') or meta['ext'] (e.g. 'jpg')"
        )
    return ext.lower().lstrip(".")


def sample_to_members(sample: Sample) -> list[tuple[str, bytes]]:
    """The tar members of one sample, in write order: ``KEY.json``, then ``KEY.<i>.<ext>``.

    Media members are named by segment index (``"<i>.<ext>"``), and the JSON is validated
    against the schema (with its members) before anything is written.
    """
    key = sample.key
    _check_key(key)
    segments: list[dict[str, Any]] = []
    media: list[tuple[str, bytes]] = []
    for i, seg in enumerate(sample.segments):
        entry: dict[str, Any] = {"kind": seg.kind}
        if seg.kind == "text":
            entry["text"] = seg.text
            if not seg.loss:
                entry["loss"] = False
        else:
            assert seg.data is not None  # Segment checks media carries bytes
            member = f"{i}.{_media_ext(key, i, seg)}"
            if len(seg.data) > MAX_MEMBER_BYTES:
                raise DataFormatError(
                    f"sample {key!r} segments[{i}]: {len(seg.data)} bytes is over the "
                    f"{MAX_MEMBER_BYTES} byte member limit readers accept; downscale or re-encode it"
                )
            entry["member"] = member
            if seg.text is not None:
                entry["text"] = seg.text
            media.append((member, seg.data))
        if seg.meta:
            entry["meta"] = seg.meta
        segments.append(entry)
    obj: dict[str, Any] = {"version": SCHEMA_VERSION, "source": sample.source, "segments": segments}
    if sample.meta:
        obj["meta"] = sample.meta
    validate_sample_json(key, obj, members={"json", *(name for name, _ in media)})
    try:
        # sort_keys: meta dicts built in another order still give the same bytes.
        raw = json.dumps(obj, ensure_ascii=False, sort_keys=True, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise DataFormatError(f"sample {key!r}: meta is not JSON-serialisable: {exc}") from None
    return [(f"{key}.json", raw)] + [(f"{key}.{name}", data) for name, data in media]


def _tar_bytes(size: int) -> int:
    """Bytes one member takes in the tar: header block plus data padded to blocks."""
    return _BLOCK + (size + _BLOCK - 1) // _BLOCK * _BLOCK


class ShardWriter:
    """Writes samples into numbered tar shards ``{out_dir}/{prefix}-000000.tar``, ...

    A new shard starts when the current one holds ``max_samples`` samples or the next
    sample would push it over ``max_bytes`` (a single larger sample gets a shard of its
    own). Each shard is written under a ``.tmp`` name and renamed when complete, so a
    crash never leaves a half-written shard under a real name. Use as a context manager::

        with ShardWriter("out/") as writer:
            writer.write(sample)
        writer.shards  # [Path("out/shard-000000.tar"), ...]
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        prefix: str = "shard",
        max_samples: int = 1000,
        max_bytes: int = 64 * 1024 * 1024,
    ):
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        if not prefix or "/" in prefix or os.sep in prefix:
            raise ValueError(f"prefix must be a plain file name prefix, got {prefix!r}")
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.shards: list[Path] = []  # completed shards, in order
        self.samples_per_shard: list[int] = []  # samples in each completed shard (index.json)
        self._tar: tarfile.TarFile | None = None
        self._file: BinaryIO | None = None
        self._tmp_path: Path | None = None
        self._samples = 0
        self._bytes = 0
        self._keys: set[str] = set()
        self._closed = False
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Finish the current shard even on error: every sample in it was fully written.
        self.close()

    @property
    def num_samples(self) -> int:
        """Samples written so far, over all shards."""
        return sum(self.samples_per_shard) + self._samples

    def write(self, sample: Sample) -> None:
        """Validate one sample and append it to the current shard."""
        if self._closed:
            raise RuntimeError("ShardWriter.write() after close()")
        members = sample_to_members(sample)
        # Keys must be unique within a shard: the reader groups members by key.
        if sample.key in self._keys:
            raise DataFormatError(f"sample key {sample.key!r} was already written to this shard")
        size = sum(_tar_bytes(len(data)) for _, data in members)
        if self._tar is not None and (
            self._samples >= self.max_samples or self._bytes + size > self.max_bytes
        ):
            self._finish_shard()
        if self._tar is None:
            self._open_shard()
        assert self._tar is not None
        for name, data in members:
            self._tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))
        self._keys.add(sample.key)
        self._samples += 1
        self._bytes += size

    def next_shard(self) -> None:
        """Finish the current shard now: the next write starts a new one (for builders
        that decide shard boundaries themselves). No-op before the first write of a shard."""
        if self._tar is not None:
            self._finish_shard()

    def close(self) -> None:
        """Finish the current shard; further writes are errors. Safe to call twice."""
        if self._tar is not None:
            self._finish_shard()
        self._closed = True

    def _open_shard(self) -> None:
        index = len(self.shards)
        self._tmp_path = self.out_dir / f"{self.prefix}-{index:06d}.tar.tmp"
        self._file = open(self._tmp_path, "wb")  # noqa: SIM115 -- closed in _finish_shard
        # PAX only adds extended headers for fields that need them (long or non-ASCII
        # names); with the fixed fields below the output is byte-for-byte reproducible.
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self._samples = 0
        self._bytes = 0
        self._keys = set()

    def _finish_shard(self) -> None:
        assert self._tar is not None and self._file is not None and self._tmp_path is not None
        self._tar.close()
        self._file.close()
        final = self._tmp_path.with_suffix("")  # drop ".tmp"
        os.replace(self._tmp_path, final)
        self.shards.append(final)
        self.samples_per_shard.append(self._samples)
        self._samples = 0
        self._bytes = 0
        self._tar = None
        self._file = None
        self._tmp_path = None


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


# ------------------------------------------------------------------------------ reading


class _Group:
    """The members of one sample as they stream by."""

    def __init__(self, key: str):
        self.key = key
        self.json: bytes | None = None
        self.media: dict[str, bytes] = {}
        self.bytes = 0
        self.problem: tuple[str, str] | None = None  # (reason, detail) of the first problem

    def fail(self, reason: str, detail: str) -> None:
        if self.problem is None:
            self.problem = (reason, detail)
        self.json = None
        self.media.clear()  # the sample is lost anyway; do not hold its bytes


def _split_name(name: str) -> tuple[str, str]:
    """``"dir/17.0.jpg"`` -> ``("dir/17", "0.jpg")``: the key ends at the basename's first dot."""
    head, sep, base = name.rpartition("/")
    stem, dot, suffix = base.partition(".")
    return head + sep + stem, suffix if dot else ""


def _member_problem(member: tarfile.TarInfo, max_member_bytes: int) -> tuple[str, str] | None:
    name = member.name
    if ".." in name or name.startswith("/") or "\\" in name:
        return "unsafe_member", f"member {name!r} has an unsafe path"
    if not member.isreg():
        kind = "link" if member.issym() or member.islnk() else "special file"
        return "unsafe_member", f"member {name!r} is a {kind}, not a regular file"
    if member.size > max_member_bytes:
        return (
            "member_too_large",
            f"member {name!r} has {member.size} bytes (limit {max_member_bytes})",
        )
    return None


def _finish_group(group: _Group, path: Path, skips: SkipCounter, count_ok: bool) -> Sample | None:
    where = f"{path}:{group.key}"
    if group.problem is not None:
        skips.skip(group.problem[0], where, group.problem[1])
        return None
    try:
        if group.json is None:
            listing = ", ".join(sorted(group.media)) or "none"
            raise DataFormatError(
                f"sample {group.key!r}: has no {group.key}.json member (members: {listing})"
            )
        obj = parse_sample_json(group.key, group.json, members={"json", *group.media})
        sample = sample_from_json(group.key, obj, group.media)
    except DataFormatError as exc:
        skips.skip("bad_sample", where, str(exc))
        return None
    if count_ok:
        skips.ok()
    return sample


def iter_shard_samples(
    path: str | os.PathLike[str],
    skips: SkipCounter,
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_sample_bytes: int = MAX_SAMPLE_BYTES,
    count_ok: bool = True,
) -> Iterator[Sample]:
    """Stream the samples of one tar shard (plain or compressed), in tar order.

    Bad samples are skipped and counted in ``skips`` by reason: ``unsafe_member`` (a
    link, device or a path with ``..``/leading ``/``), ``member_too_large``,
    ``sample_too_large``, ``duplicate_key`` and ``bad_sample`` (the sample fails the
    schema: invalid JSON, missing or unreferenced or disallowed members such as
    ``KEY.pyd``). A truncated or corrupt tar counts one ``corrupt_tar`` skip and ends the
    shard; samples already yielded stay yielded. ``count_ok``: count each yielded sample
    as good (pass False when the caller may still reject it and counts itself).
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a shard" if path.is_dir() else "not found"
        raise DataFormatError(f"shard {what}: {path}")
    try:
        raw = open(path, "rb")  # noqa: SIM115 -- closed by the `with raw` below
    except OSError as exc:
        raise DataFormatError(f"cannot read shard {path}: {exc.strerror or exc}") from None
    try:
        # A forward-only stream: members are read into memory one at a time and never
        # extracted, so their names cannot point anywhere.
        with raw, _decompressed(raw) as stream:
            tail = _TailReader(stream)
            with tarfile.open(fileobj=cast("IO[bytes]", tail), mode="r|") as tar:
                for group in _iter_groups(tar, tail, max_member_bytes, max_sample_bytes):
                    sample = _finish_group(group, path, skips, count_ok)
                    if sample is not None:
                        yield sample
    except _CORRUPT_ERRORS as exc:
        # The sample being read when the stream broke may be incomplete: it is dropped.
        skips.skip("corrupt_tar", str(path), f"truncated or corrupt tar: {exc}")


def _iter_groups(
    tar: tarfile.TarFile, tail: _TailReader, max_member_bytes: int, max_sample_bytes: int
) -> Iterator[_Group]:
    """The members of ``tar`` grouped by sample key; raises ``ReadError`` on a damaged end."""
    seen: set[str] = set()
    group: _Group | None = None
    for member in tar:
        # The stream keeps every TarInfo it has seen; drop them to stay flat.
        tar.members = []  # type: ignore[attr-defined]
        if member.isdir():
            continue  # harmless and common in tars made with `tar cf`; never used
        key, suffix = _split_name(member.name)
        if group is None or key != group.key:
            if group is not None:
                yield group  # complete: the members of a sample are contiguous
            group = _Group(key)
            if key in seen:
                group.fail(
                    "duplicate_key",
                    f"sample key {key!r} appears twice (members of a sample must be contiguous)",
                )
            seen.add(key)
        if group.problem is None:
            _read_member(tar, member, suffix, group, max_member_bytes, max_sample_bytes)
    # tarfile ends quietly on a missing or garbled header, which is how a shard cut at a
    # block boundary looks; only an all-zero block really ends the archive. Until that is
    # seen the last sample may be missing members, so it is checked first.
    end = tail.block_at(tar.offset)
    if len(end) < _BLOCK or any(end):
        what = "is cut short" if len(end) < _BLOCK else "has a damaged header"
        raise tarfile.ReadError(f"{what} at byte {tar.offset} (no end-of-archive marker)")
    if group is not None:
        yield group


def _read_member(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    suffix: str,
    group: _Group,
    max_member_bytes: int,
    max_sample_bytes: int,
) -> None:
    """Check one member and add its bytes to ``group`` (or mark the group bad)."""
    problem = _member_problem(member, max_member_bytes)
    if problem is None and not suffix:
        problem = ("bad_sample", f"member {member.name!r} has no extension")
    if problem is None and group.bytes + member.size > max_sample_bytes:
        problem = ("sample_too_large", f"members exceed {max_sample_bytes} bytes")
    if problem is None and (suffix in group.media or (suffix == "json" and group.json is not None)):
        problem = ("bad_sample", f"member {member.name!r} appears twice")
    if problem is not None:
        group.fail(*problem)
        return
    if suffix != "json" and not _MEDIA_MEMBER.match(suffix):
        # Disallowed (e.g. KEY.pyd): record the name so that validation rejects the sample
        # with a clear message, but never read its bytes.
        group.media[suffix] = b""
        return
    fileobj = tar.extractfile(member)
    assert fileobj is not None  # a regular file, checked above
    data = fileobj.read()
    group.bytes += len(data)
    if suffix == "json":
        group.json = data
    else:
        group.media[suffix] = data


def _decompressed(raw: BinaryIO) -> BinaryIO:
    """``raw`` itself, or a streaming decompressor for gzip, bzip2 or xz shards."""
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw, mode="rb")  # type: ignore[return-value]
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw, mode="rb")  # type: ignore[return-value]
    return raw


class _TailReader:
    """A read-only stream that keeps the last bytes read, with their offset.

    tarfile reads through it in 10 KiB records; keeping 32 KiB is enough to look at the
    block where the archive ended.
    """

    _KEEP = 32 * 1024

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._tail = bytearray()
        self._tail_start = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._tail += data
        excess = len(self._tail) - self._KEEP
        if excess > 0:
            del self._tail[:excess]
            self._tail_start += excess
        return data

    def block_at(self, offset: int) -> bytes:
        """The (up to 512) bytes read at ``offset``; empty if not read or no longer kept."""
        if offset < self._tail_start:
            return b""
        start = offset - self._tail_start
        return bytes(self._tail[start : start + _BLOCK])
