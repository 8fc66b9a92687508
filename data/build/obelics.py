"""OBELICS rows -> interleaved records (one row of the released Parquet files, or JSONL).

A row holds ``images`` and ``texts``, two lists of equal length in document order with
exactly one non-null entry per position; ``metadata`` is a JSON string decoding to a list
of the same length (a dict per image position: ``src``, ``alt_text``, ...) and
``general_metadata`` a JSON string (the document ``url``, crawl information).

Images are URLs. The local file of ``https://host/img/harbour.jpg`` is looked up as
``--images-dir/harbour.jpg`` (the URL path's last component), then as
``--images-dir/img/harbour.jpg`` (the URL path without its leading slash). An entry that
already carries the image (bytes, or ``{"bytes": ...}`` as in Hugging Face exports with an
Image column) is used as it is. Consecutive text positions (paragraphs) are joined with a
blank line into one text segment.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from .records import RecordSegment, RecordSkip, SourceRecord, text_segment

ImageFinder = Callable[[str], Path | None]
"""Maps an image name relative to ``--images-dir`` to the existing file (None: missing)."""

PARAGRAPH_SEPARATOR = "\n\n"


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def url_candidates(url: str) -> list[str]:
    """Where the image of ``url`` may lie under ``--images-dir``, in the order tried."""
    path = urlparse(url).path if "://" in url else url
    relative = path.lstrip("/")
    names = [PurePosixPath(relative).name, relative]
    return [name for n, name in enumerate(names) if name and name not in names[:n]]


def _json_field(row: dict[str, Any], field: str, kind: type) -> Any:
    """``row[field]`` decoded from its JSON string (None when absent or null); raises
    ValueError with a message when it is not JSON of type ``kind``."""
    value = row.get(field)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{field} is not valid JSON: {exc}") from None
        except RecursionError:  # "[[[[...": hostile input must not crash the build
            raise ValueError(f"{field} is not valid JSON: nested too deeply") from None
    if not isinstance(value, kind):
        raise ValueError(f"{field} decodes to {_type_name(value)}, not a JSON {kind.__name__}")
    return value


def _image_segment(image: object, meta: dict[str, Any], find_image: ImageFinder) -> RecordSegment | None:
    """The segment of one image entry (None: its file is missing); ValueError if malformed."""
    if isinstance(image, dict) and isinstance(image.get("bytes"), bytes):
        image = image["bytes"]
    elif isinstance(image, dict) and isinstance(image.get("path"), str):
        image = image["path"]
    if isinstance(image, bytes):
        return RecordSegment("image", data=image, meta=meta)
    if not isinstance(image, str) or not image:
        raise ValueError(f"is {_type_name(image)}, not an image URL")
    meta = {"url": image, **meta}
    for name in url_candidates(image):
        path = find_image(name)
        if path is not None:
            return RecordSegment("image", path=path, meta=meta)
    return None


def _image_meta(metadata: list[Any] | None, n: int) -> dict[str, Any]:
    entry = metadata[n] if metadata is not None else None
    if isinstance(entry, dict) and isinstance(entry.get("alt_text"), str) and entry["alt_text"]:
        return {"alt_text": entry["alt_text"]}
    return {}


def obelics_record(
    row: dict[str, Any], where: str, key: str, find_image: ImageFinder
) -> SourceRecord | RecordSkip:
    """One OBELICS document as a record, or a :class:`RecordSkip` naming what is malformed.

    Images whose file does not exist are dropped and counted in ``meta.missing_images``
    (the document keeps its text and its other images); ``meta.url`` is the document URL
    from ``general_metadata``; image segments keep their ``url`` and ``alt_text``.
    """
    for field in ("images", "texts"):
        if field not in row:
            fields = ", ".join(sorted(row)) or "none"
            return RecordSkip("missing_field", where, f"no field {field!r} (fields: {fields})")
    images, texts = row["images"], row["texts"]
    if not isinstance(images, list) or not isinstance(texts, list):
        return RecordSkip(
            "malformed_row",
            where,
            f"images and texts must be lists, got {_type_name(images)} and {_type_name(texts)}",
        )
    if len(images) != len(texts):
        return RecordSkip(
            "malformed_row", where, f"images has {len(images)} entries but texts has {len(texts)}"
        )
    try:
        metadata = _json_field(row, "metadata", list)
        general = _json_field(row, "general_metadata", dict) or {}
    except ValueError as exc:
        return RecordSkip("malformed_row", where, str(exc))
    if metadata is not None and len(metadata) != len(images):
        return RecordSkip(
            "malformed_row", where, f"metadata has {len(metadata)} entries but images has {len(images)}"
        )
    segments: list[RecordSegment] = []
    paragraphs: list[str] = []
    missing = 0
    for n, (image, text) in enumerate(zip(images, texts, strict=True)):
        if (image is None) == (text is None):
            both = "both null" if image is None else "both set"
            return RecordSkip("malformed_row", where, f"position {n}: images and texts are {both}")
        if text is not None:
            if not isinstance(text, str):
                return RecordSkip("malformed_row", where, f"texts[{n}] is {_type_name(text)}, not a string")
            if text.strip():
                paragraphs.append(text.strip())
            continue
        try:
            segment = _image_segment(image, _image_meta(metadata, n), find_image)
        except ValueError as exc:
            return RecordSkip("malformed_row", where, f"images[{n}] {exc}")
        if segment is None:
            missing += 1
            continue
        if paragraphs:
            segments.append(text_segment(PARAGRAPH_SEPARATOR.join(paragraphs)))
            paragraphs = []
        segments.append(segment)
    if paragraphs:
        segments.append(text_segment(PARAGRAPH_SEPARATOR.join(paragraphs)))
    meta: dict[str, Any] = {"source": "obelics", "missing_images": missing}
    if isinstance(general.get("url"), str):
        meta["url"] = general["url"]
    return SourceRecord(key, where, tuple(segments), meta)
