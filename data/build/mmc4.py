"""MMC4 (Multimodal C4) documents -> interleaved records (one row of a ``docs_shard`` file).

A row holds ``text_list`` (the document's sentences, in order) and ``image_info`` (each
image's ``image_name``, ``raw_url``, ``matched_text_index`` and CLIP ``matched_sim``).
Each image is placed right *before* the sentence it is matched to, as mmc4's own code and
OpenFlamingo's training do; several images matched to one sentence keep their
``image_info`` order. Consecutive sentences are joined with a space into one text segment.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .records import RecordSegment, RecordSkip, SourceRecord, text_segment

ImageFinder = Callable[[str], Path | None]
"""Maps an image name relative to ``--images-dir`` to the existing file (None: missing)."""


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _placed_image(
    info: object, n: int, sentences: int, find_image: ImageFinder, min_sim: float | None
) -> tuple[int, RecordSegment | str] | str:
    """``(sentence index, image segment or "missing"/"low_sim")``, or an error message."""
    if not isinstance(info, dict):
        return f"image_info[{n}] is {_type_name(info)}, not an object"
    name = info.get("image_name")
    index = info.get("matched_text_index")
    sim = info.get("matched_sim")
    if not isinstance(name, str) or not name:
        return f"image_info[{n}].image_name is {_type_name(name)}, not a file name"
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < sentences:
        return f"image_info[{n}].matched_text_index {index!r} is out of range for {sentences} sentences"
    if sim is not None and not _is_number(sim):
        return f"image_info[{n}].matched_sim is {_type_name(sim)}, not a number"
    if min_sim is not None and (sim is None or sim < min_sim):
        return index, "low_sim"
    path = find_image(name)
    if path is None:
        return index, "missing"
    meta: dict[str, Any] = {"name": name}
    if isinstance(info.get("raw_url"), str):
        meta["url"] = info["raw_url"]
    if sim is not None:
        meta["matched_sim"] = sim
    return index, RecordSegment("image", path=path, meta=meta)


def mmc4_record(
    row: dict[str, Any], where: str, key: str, find_image: ImageFinder, min_sim: float | None
) -> SourceRecord | RecordSkip:
    """One MMC4 document as a record, or a :class:`RecordSkip` naming what is malformed.

    Images whose ``matched_sim`` is below ``min_sim`` (or that have none while a threshold
    is set) are dropped and counted in ``meta.low_sim_images``; images whose file does not
    exist are dropped and counted in ``meta.missing_images`` (the document keeps its text
    and its other images). ``meta`` also keeps ``url`` and ``could_have_url_duplicate``.
    """
    for field in ("text_list", "image_info"):
        if field not in row:
            fields = ", ".join(sorted(row)) or "none"
            return RecordSkip("missing_field", where, f"no field {field!r} (fields: {fields})")
    sentences = row["text_list"]
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
        return RecordSkip("malformed_row", where, "text_list must be a list of strings")
    images = row["image_info"]
    if not isinstance(images, list):
        return RecordSkip("malformed_row", where, f"image_info is {_type_name(images)}, not a list")
    before: dict[int, list[RecordSegment]] = {}
    dropped = {"missing": 0, "low_sim": 0}
    for n, info in enumerate(images):
        placed = _placed_image(info, n, len(sentences), find_image, min_sim)
        if isinstance(placed, str):
            return RecordSkip("malformed_row", where, placed)
        index, image = placed
        if isinstance(image, str):
            dropped[image] += 1
        else:
            before.setdefault(index, []).append(image)
    segments: list[RecordSegment] = []
    pending: list[str] = []
    for index, sentence in enumerate(sentences):
        if index in before:
            if pending:
                segments.append(text_segment(" ".join(pending)))
                pending = []
            segments.extend(before[index])
        if sentence.strip():
            pending.append(sentence.strip())
    if pending:
        segments.append(text_segment(" ".join(pending)))
    meta: dict[str, Any] = {
        "source": "mmc4",
        "missing_images": dropped["missing"],
        "low_sim_images": dropped["low_sim"],
    }
    for field in ("url", "could_have_url_duplicate"):
        if row.get(field) is not None:
            meta[field] = row[field]
    return SourceRecord(key, where, tuple(segments), meta)
