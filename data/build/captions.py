"""`--format captions`: image-caption pairs -> one sample per image: the image, then its caption(s).

The layout is detected from each input file's content:

- **LLaVA-Pretrain** (LCS-558K ``blip_laion_cc_sbu_558k.json``): a JSON list (or JSON Lines)
  of ``{"id", "image", "conversations"}``. The assistant (``gpt``) turn is the caption; the
  human prompt ("Render a clear and concise summary of the photo.\\n<image>") is dropped.
- **COCO captions** (``captions_train2017.json``): an object with ``images`` and
  ``annotations``; the captions of an image are grouped into one sample, each caption its
  own text segment.
- **Karpathy split** (``dataset_coco.json``): an object whose ``images`` carry
  ``filepath``/``filename``/``split``/``sentences``; the image is
  ``--images-dir/filepath/filename`` and ``--split`` (repeatable) keeps only those splits.
- **Generic** ``.jsonl`` / ``.csv`` rows (or a JSON list of objects) with an image column
  (``image`` or ``url``) and a caption column (``caption`` or ``text``).

Image paths are relative to ``--images-dir`` (default: the input's directory). Malformed
rows (bad JSON, missing or non-string fields, empty captions, captions of unknown images)
are skipped and counted with file and line (``data.jsonl:7``), list index
(``llava.json:[3]``) or image id (``captions.json:image 397133``).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from mmpretrain.errors import DataFormatError, UserError

from .formats import RecordStream, input_files, register_format
from .options import BuildOptions
from .records import RecordSegment, RecordSkip, SourceRecord, text_segment

IMAGE_COLUMNS = ("image", "url")
"""Column names of a generic row's image path, in order of preference."""

CAPTION_COLUMNS = ("caption", "text")
"""Column names of a generic row's caption, in order of preference."""

KARPATHY_SPLITS = ("train", "restval", "val", "test")
"""The splits of the Karpathy files (``--split train --split restval`` is the usual training set)."""

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def key_part(value: object) -> str:
    """``value`` as one webdataset-safe key component (no dots or slashes)."""
    return _UNSAFE_KEY_CHARS.sub("_", str(value)) or "_"


def read_json(path: Path) -> Any:
    """The parsed content of a JSON file; a one-line :class:`DataFormatError` if it is unreadable."""
    try:
        with path.open("r", encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        hint = "; JSON Lines files need the .jsonl extension" if exc.msg == "Extra data" else ""
        raise DataFormatError(
            f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}){hint}"
        ) from None
    except RecursionError:  # "[[[[...": hostile input must not crash the build
        raise DataFormatError(f"{path}: not valid JSON (nested too deeply)") from None


def jsonl_objects(path: Path) -> Iterator[tuple[str, Any] | RecordSkip]:
    """``(where, object)`` for each non-blank line of a JSON Lines file (``where`` is
    ``"name:line"``), or a ``bad_json`` :class:`RecordSkip` for a line that does not parse."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                yield where, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield RecordSkip("bad_json", where, "the line is not UTF-8 text")
            except json.JSONDecodeError as exc:
                yield RecordSkip("bad_json", where, f"not valid JSON: {exc.msg} at column {exc.colno}")
            except RecursionError:
                yield RecordSkip("bad_json", where, "not valid JSON: nested too deeply")


def media_segment(
    kind: Literal["image", "audio"], value: object, options: BuildOptions
) -> RecordSegment | str:
    """A media segment for a path relative to ``--images-dir`` (``--audio-dir``), or a
    sentence saying why ``value`` is not a usable path."""
    if not isinstance(value, str) or not value.strip():
        return f"the {kind} must be a non-empty path string, got {value!r}"
    if "://" in value:
        flag = "--images-dir" if kind == "image" else "--audio-dir"
        return f"{value} is a URL; download the files first and give local paths ({flag})"
    return RecordSegment(kind, path=options.media_root(kind) / value.strip())


def image_segment(value: object, options: BuildOptions) -> RecordSegment | str:
    """:func:`media_segment` for an image."""
    return media_segment("image", value, options)


def _caption(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _record(
    key: str, where: str, image: RecordSegment, captions: list[str], meta: dict[str, Any]
) -> SourceRecord:
    # Text segments are tokenized one by one and concatenated: a newline keeps several
    # captions of one image (COCO, Karpathy) apart in the token stream.
    segments = (image, *(text_segment(c if i == 0 else "\n" + c) for i, c in enumerate(captions)))
    return SourceRecord(key, where, segments, meta)


def _first(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    return next((row[name] for name in names if row.get(name) not in (None, "")), None)


def _llava_item(
    item: dict[str, Any], where: str, options: BuildOptions, fallback: str
) -> SourceRecord | RecordSkip:
    """One LLaVA-Pretrain item: the image, then the assistant's answer as the caption (the
    key is its ``id``, or ``fallback`` without one)."""
    turns = item.get("conversations")
    if not isinstance(turns, list):
        return RecordSkip("bad_record", where, "'conversations' must be a list of turns")
    answers = [
        t.get("value")
        for t in turns
        if isinstance(t, dict) and t.get("from", t.get("role")) in ("gpt", "assistant")
    ]
    captions = [c for c in map(_caption, answers) if c is not None]
    if not captions or len(captions) != len(answers):
        return RecordSkip("bad_caption", where, "needs a gpt turn whose value is a non-empty string")
    image = image_segment(item.get("image"), options)
    if isinstance(image, str):
        return RecordSkip("bad_image_path", where, image)
    raw_id = item.get("id")
    name = key_part(raw_id) if isinstance(raw_id, (str, int)) and str(raw_id) else fallback
    meta = {"source": "llava-pretrain", **({"id": raw_id} if raw_id is not None else {})}
    return _record(f"llava-pretrain/{name}", where, image, captions, meta)


def _generic_row(
    row: dict[str, Any], where: str, options: BuildOptions, name: str
) -> SourceRecord | RecordSkip:
    """One {image, caption} row, or a LLaVA-Pretrain item (it has ``conversations``); ``name``
    makes the key of rows without an id."""
    if "conversations" in row:
        return _llava_item(row, where, options, name)
    caption = _caption(_first(row, CAPTION_COLUMNS))
    if caption is None:
        got = _first(row, CAPTION_COLUMNS)
        what = "is missing" if got is None else f"must be a non-empty string, got {got!r}"
        return RecordSkip("bad_caption", where, f"the caption ({'/'.join(CAPTION_COLUMNS)}) {what}")
    image = image_segment(_first(row, IMAGE_COLUMNS), options)
    if isinstance(image, str):
        return RecordSkip("bad_image_path", where, f"{'/'.join(IMAGE_COLUMNS)}: {image}")
    return _record(f"captions/{name}", where, image, [caption], {"source": "captions"})


def _jsonl_records(path: Path, options: BuildOptions) -> RecordStream:
    stem = key_part(path.stem)
    for entry in jsonl_objects(path):
        if isinstance(entry, RecordSkip):
            yield entry
            continue
        where, row = entry
        if not isinstance(row, dict):
            yield RecordSkip("bad_record", where, f"expected a JSON object, got {type(row).__name__}")
            continue
        line = int(where.rsplit(":", 1)[1])
        yield _generic_row(row, where, options, f"{stem}-{line:09d}")


def _csv_records(path: Path, options: BuildOptions) -> RecordStream:
    stem = key_part(path.stem)
    try:
        handle = path.open("r", encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        reader = csv.DictReader(handle)
        try:
            columns = set(reader.fieldnames or ())
            if not columns & set(IMAGE_COLUMNS) or not columns & set(CAPTION_COLUMNS):
                raise DataFormatError(
                    f"{path}:1: the header needs an image column ({' or '.join(IMAGE_COLUMNS)}) and a "
                    f"caption column ({' or '.join(CAPTION_COLUMNS)}); it has: {', '.join(sorted(columns))}"
                )
            line = reader.line_num + 1  # the first line of the next row
            for row in reader:
                where = f"{path.name}:{line}"
                name = f"{stem}-{line:09d}"
                line = reader.line_num + 1
                if None in row:
                    yield RecordSkip("bad_record", where, "the row has more fields than the header")
                    continue
                yield _generic_row(row, where, options, name)
        except UnicodeDecodeError as exc:
            raise DataFormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except csv.Error as exc:
            raise DataFormatError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None


def _list_records(path: Path, items: list[Any], options: BuildOptions) -> RecordStream:
    """A JSON list of LLaVA-Pretrain items or {image, caption} objects."""
    stem = key_part(path.stem)
    for index, item in enumerate(items):
        where = f"{path.name}:[{index}]"
        if not isinstance(item, dict):
            yield RecordSkip("bad_record", where, f"expected a JSON object, got {type(item).__name__}")
            continue
        yield _generic_row(item, where, options, f"{stem}-{index:09d}")


def _coco_records(path: Path, data: dict[str, Any], options: BuildOptions) -> RecordStream:
    """One sample per COCO image with all of its captions, in the order of ``images``."""
    images: dict[Any, dict[str, Any]] = {}
    for index, image in enumerate(data["images"]):
        where = f"{path.name}:images[{index}]"
        if not isinstance(image, dict) or not isinstance(image.get("id"), (int, str)):
            yield RecordSkip("bad_record", where, "an image needs an 'id' (and 'file_name')")
            continue
        images[image["id"]] = image
    captions: dict[Any, list[tuple[Any, str]]] = {}
    for index, ann in enumerate(data["annotations"]):
        where = f"{path.name}:annotations[{index}]"
        if not isinstance(ann, dict):
            yield RecordSkip("bad_record", where, f"expected a JSON object, got {type(ann).__name__}")
            continue
        image_id = ann.get("image_id")
        caption = _caption(ann.get("caption"))
        if caption is None:
            yield RecordSkip(
                "bad_caption", where, f"caption must be a non-empty string, got {ann.get('caption')!r}"
            )
        elif not isinstance(image_id, (int, str)) or image_id not in images:
            yield RecordSkip("unknown_image", where, f"image_id {image_id!r} is not in 'images'")
        else:
            captions.setdefault(image_id, []).append((ann.get("id"), caption))
    for image_id, image in images.items():
        where = f"{path.name}:image {image_id}"
        found = captions.get(image_id)
        if not found:
            yield RecordSkip("no_caption", where, "no annotation has a caption for this image")
            continue
        segment = image_segment(image.get("file_name"), options)
        if isinstance(segment, str):
            yield RecordSkip("bad_image_path", where, f"file_name: {segment}")
            continue
        meta = {
            "source": "coco-captions",
            "image_id": image_id,
            "file_name": image["file_name"],
            "caption_ids": [ann_id for ann_id, _ in found],
        }
        yield _record(f"coco/{key_part(image_id)}", where, segment, [c for _, c in found], meta)


def _karpathy_records(path: Path, images: list[Any], options: BuildOptions) -> RecordStream:
    """One sample per image of the kept splits, with its raw sentences."""
    if options.splits:
        present = {img.get("split") for img in images if isinstance(img, dict)}
        unknown = sorted(set(options.splits) - present - set(KARPATHY_SPLITS))
        if unknown:
            names = ", ".join(sorted({*KARPATHY_SPLITS, *(str(s) for s in present)}))
            raise UserError(f"--split {', '.join(unknown)}: not a split of {path} (splits: {names})")
    for index, image in enumerate(images):
        where = f"{path.name}:images[{index}]"
        if not isinstance(image, dict):
            yield RecordSkip("bad_record", where, f"expected a JSON object, got {type(image).__name__}")
            continue
        if options.splits and image.get("split") not in options.splits:
            continue
        sentences = image.get("sentences")
        listed = sentences if isinstance(sentences, list) else []
        raws = [s.get("raw") if isinstance(s, dict) else s for s in listed]
        captions = [c for c in map(_caption, raws) if c is not None]
        if not isinstance(sentences, list) or not captions or len(captions) != len(raws):
            yield RecordSkip("bad_caption", where, "'sentences' must be a list of {raw: non-empty string}")
            continue
        filename = image.get("filename")
        filepath = image.get("filepath", "")
        if not isinstance(filepath, str) or not isinstance(filename, str):
            yield RecordSkip("bad_image_path", where, "'filepath' and 'filename' must be strings")
            continue
        segment = image_segment(str(Path(filepath) / filename), options)
        if isinstance(segment, str):
            yield RecordSkip("bad_image_path", where, segment)
            continue
        cocoid = image.get("cocoid", image.get("imgid", index))
        meta = {"source": "coco-karpathy", "split": image.get("split"), "cocoid": cocoid}
        yield _record(f"coco-karpathy/{key_part(cocoid)}", where, segment, captions, meta)


def _json_records(path: Path, data: Any, options: BuildOptions) -> RecordStream:
    """Detect the layout of one parsed JSON file and yield its records."""
    if isinstance(data, list):
        layout, records = "a JSON list", _list_records(path, data, options)
    elif (
        isinstance(data, dict)
        and isinstance(data.get("images"), list)
        and isinstance(data.get("annotations"), list)
    ):
        layout, records = "COCO captions", _coco_records(path, data, options)
    elif (
        isinstance(data, dict)
        and isinstance(data.get("images"), list)
        and all(isinstance(i, dict) and "sentences" in i for i in data["images"][:10])
    ):
        return _karpathy_records(path, data["images"], options)
    else:
        raise DataFormatError(
            f"{path}: not a captions layout: expected a JSON list of LLaVA-Pretrain items, a COCO "
            "captions object (images + annotations) or a Karpathy split (images with sentences)"
        )
    if options.splits:
        raise UserError(f"--split applies to the Karpathy split layout; {path} is {layout}")
    return records


@register_format(
    "captions",
    "LLaVA-Pretrain JSON, COCO captions, Karpathy split or {image, caption} JSONL/CSV -> image then caption",
    "mmpt data build --format captions --input blip_laion_cc_sbu_558k.json --images-dir images "
    "--out shards/llava-pretrain",
)
def parse_captions(options: BuildOptions) -> RecordStream:
    """One record per image: the image, then its caption(s) as text segments with loss."""
    for path in input_files(options, (".json", ".jsonl", ".csv")):
        suffix = path.suffix.lower()
        if options.splits and suffix != ".json":
            raise UserError(f"--split applies to the Karpathy split layout (a .json file), not to {path}")
        if suffix == ".csv":
            yield from _csv_records(path, options)
        elif suffix == ".jsonl":
            yield from _jsonl_records(path, options)
        else:
            yield from _json_records(path, read_json(path), options)
