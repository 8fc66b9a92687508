"""`--format interleaved`: MMC4 and OBELICS documents -> interleaved text+image shards.

``--input`` is a file, directory or glob of ``.jsonl``/``.jsonl.gz`` files, ``.zip``
archives of JSONL shards (as MMC4 releases them: every ``.jsonl`` member, in name order,
streamed) and ``.parquet`` files (as OBELICS releases them: read batch by batch, never a
whole file at once). Each row is one document; skips name their place as
``docs.jsonl:17``, ``docs_shard_3_v2.jsonl.zip/docs_shard_3_v2.jsonl:17`` or
``obelics.parquet:row 16``.

The layout is detected per file from the fields of its first JSON object (``text_list`` +
``image_info``: :mod:`mmc4`; ``images`` + ``texts``: :mod:`obelics`); ``--layout``
overrides it. Image files are looked up under ``--images-dir`` (default: the input's
directory) while parsing: a missing image is dropped from its document and counted in the
sample's ``meta.missing_images``. A document left with neither images nor text is skipped
(``missing_image`` when images were missing, else ``empty_record``); a text-only
document whose images are all missing is kept. When not one of the first 50 images
referenced exists, the build stops with a one-line error asking for ``--images-dir``.
"""

from __future__ import annotations

import gzip
import json
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from mmpretrain.errors import DataFormatError, UserError

from .formats import RecordStream, input_files, register_format
from .mmc4 import mmc4_record
from .obelics import obelics_record
from .options import BuildOptions
from .records import RecordSkip, SourceRecord

LAYOUTS = ("mmc4", "obelics")
INPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".zip", ".parquet")

IMAGES_BEFORE_CHECK = 50
"""Once this many images were referenced and not one of them exists, the build stops: the
images are elsewhere (a wrong or missing ``--images-dir``), not merely a few missing."""

Row = tuple[str, dict[str, Any]]
"""``(where, row)``: one input row and its place."""


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


# ------------------------------------------------------------------------------ rows


def _json_lines(lines: Iterable[bytes], name: str) -> Iterator[Row | RecordSkip]:
    """The JSON objects of a stream of lines (blank lines are not records)."""
    number = records = 0
    try:
        for number, raw in enumerate(lines, 1):
            where = f"{name}:{number}"
            line = raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw
            if not line.strip():
                continue
            records += 1
            try:
                obj = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield RecordSkip("bad_utf8", where, f"not valid UTF-8 at byte {exc.start} of the line")
                continue
            except ValueError as exc:
                yield RecordSkip("invalid_json", where, f"invalid JSON: {exc}")
                continue
            except RecursionError:  # "[[[[...": hostile input must not crash the build
                yield RecordSkip("invalid_json", where, "invalid JSON: nested too deeply")
                continue
            if not isinstance(obj, dict):
                yield RecordSkip("malformed_row", where, f"expected a JSON object, got {_type_name(obj)}")
                continue
            yield where, obj
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        # A file cut short or a bad CRC: keep what was read, skip the rest.
        yield RecordSkip("corrupt_file", f"{name}:{number + 1}", f"cannot read on: {exc}")
        return
    if records == 0:
        yield RecordSkip("empty", name, "the file has no records")


def _jsonl_rows(path: Path) -> Iterator[Row | RecordSkip]:
    with gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb") as stream:
        yield from _json_lines(stream, str(path))


def _zip_rows(path: Path) -> Iterator[Row | RecordSkip]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        yield RecordSkip("corrupt_file", str(path), f"not a readable zip archive: {exc}")
        return
    with archive:
        members = sorted(
            info.filename
            for info in archive.infolist()
            if not info.is_dir() and info.filename.lower().endswith(".jsonl")
        )
        if not members:
            yield RecordSkip("empty", str(path), "the archive holds no .jsonl member")
        for member in members:
            name = f"{path}/{member}"
            try:
                stream = archive.open(member)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError) as exc:
                yield RecordSkip("corrupt_file", name, f"cannot open the member: {exc}")
                continue
            with stream:
                yield from _json_lines(stream, name)


def _parquet_rows(path: Path) -> Iterator[Row | RecordSkip]:
    import pyarrow as pa  # imported here: `import mmpretrain.data` stays cheap
    import pyarrow.parquet as pq

    name = str(path)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        yield RecordSkip("corrupt_file", name, f"not a readable Parquet file: {exc}")
        return
    row = 0
    with parquet:
        try:
            for batch in parquet.iter_batches(batch_size=256):
                for values in batch.to_pylist():
                    yield f"{name}:row {row}", values
                    row += 1
        except (pa.ArrowException, OSError) as exc:
            yield RecordSkip("corrupt_file", f"{name}:row {row}", f"cannot read on: {exc}")
            return
    if row == 0:
        yield RecordSkip("empty", name, "the file has no rows")


def input_rows(path: Path) -> Iterator[Row | RecordSkip]:
    """The rows of one input file with their places, and a skip for each unreadable one."""
    lower = path.name.lower()
    if lower.endswith((".jsonl", ".jsonl.gz")):
        return _jsonl_rows(path)
    if lower.endswith(".zip"):
        return _zip_rows(path)
    if lower.endswith(".parquet"):
        return _parquet_rows(path)
    raise DataFormatError(
        f"{path}: not an interleaved input; expected .jsonl, .jsonl.gz, .zip (of .jsonl shards) or .parquet"
    )


# ------------------------------------------------------------------------------ layouts


def detect_layout(row: dict[str, Any]) -> str | None:
    """``mmc4`` (``text_list`` + ``image_info``), ``obelics`` (``images`` + ``texts``) or None."""
    if "text_list" in row and "image_info" in row:
        return "mmc4"
    if "images" in row and "texts" in row:
        return "obelics"
    return None


def _layout_error(where: str, row: dict[str, Any]) -> DataFormatError:
    fields = ", ".join(sorted(row)[:12]) or "none"
    return DataFormatError(
        f"{where}: unknown interleaved layout (fields: {fields}); expected text_list + image_info "
        "(mmc4) or images + texts (obelics); pass --layout mmc4|obelics if the fields are there"
    )


def image_finder(root: Path) -> Callable[[str], Path | None]:
    """A function mapping an image name relative to ``root`` to its file, or None when the
    file does not exist (or the name is absolute or climbs out of ``root`` with ``..``)."""

    def find(name: str) -> Path | None:
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or name.startswith("\\"):
            return None
        path = root / relative
        return path if path.is_file() else None

    return find


def _kept_or_skipped(record: SourceRecord) -> SourceRecord | RecordSkip:
    """The record, or a skip when missing images left it with neither media nor text."""
    if any(s.is_media or (s.text or "").strip() for s in record.segments):
        return record
    missing = int(record.meta.get("missing_images", 0))
    if missing:
        detail = f"none of the document's {missing} image file(s) exists and it has no text"
        return RecordSkip("missing_image", record.where, detail)
    return RecordSkip("empty_record", record.where, "the document has no text and no images")


def _no_images_error(root: Path, missing: int) -> DataFormatError:
    return DataFormatError(
        f"none of the first {missing} images the documents reference exists under {root}; "
        "pass --images-dir DIR (the directory the images were downloaded to)"
    )


def _forced_layout(options: BuildOptions) -> str | None:
    if options.layout is None:
        return None
    layout = options.layout.lower()
    if layout not in LAYOUTS:
        raise UserError(f"--layout {options.layout!r} is not an interleaved layout; use mmc4 or obelics")
    return layout


@register_format(
    "interleaved",
    "MMC4 / OBELICS documents (.jsonl[.gz], zipped jsonl shards, .parquet) -> interleaved text+image samples",
    "mmpt data build --format interleaved --input 'docs_shard_*_v2.jsonl.zip' --images-dir images "
    "--min-sim 0.24 --out shards/mmc4",
)
def parse_interleaved(options: BuildOptions) -> RecordStream:
    """One record per MMC4 or OBELICS document, in input order (see the module docstring)."""
    forced = _forced_layout(options)
    root = options.media_root("image")
    find_image = image_finder(root)
    number = found = missing = 0
    for path in input_files(options, INPUT_SUFFIXES):
        layout = forced
        for row in input_rows(path):
            if isinstance(row, RecordSkip):
                yield row
                continue
            where, values = row
            layout = layout or detect_layout(values)
            if layout is None:
                raise _layout_error(where, values)
            key = f"{layout}/{number:09d}"
            if layout == "mmc4":
                record = mmc4_record(values, where, key, find_image, options.min_sim)
            else:
                record = obelics_record(values, where, key, find_image)
            if isinstance(record, SourceRecord):
                number += 1
                found += sum(s.is_media for s in record.segments)
                missing += int(record.meta.get("missing_images", 0))
                if not found and missing >= IMAGES_BEFORE_CHECK:
                    raise _no_images_error(root, missing)
                yield _kept_or_skipped(record)
            else:
                yield record
