"""The versioned ``KEY.json`` schema of a shard sample (docs/data-format.md).

A sample in a webdataset tar is ``KEY.json`` plus media members ``KEY.<i>.<ext>``. The
JSON lists the document's segments in order; media segments name their member by the
part after ``KEY.`` (``"0.jpg"``). Everything here is plain-Python validation so that the
reader, ``mmpt data inspect`` and the writers all apply one set of rules, and every error
names the sample key and the field path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import Any

from mmpretrain.errors import DataFormatError

from .types import Sample, Segment

SCHEMA_VERSION = 1
"""The newest ``KEY.json`` schema version this code reads (and the one writers write)."""

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
AUDIO_EXTENSIONS: tuple[str, ...] = ("flac", "wav")

_MEMBER_PATTERNS = {
    "image": re.compile(r"^\d+\.(" + "|".join(IMAGE_EXTENSIONS) + r")$"),
    "audio": re.compile(r"^\d+\.(" + "|".join(AUDIO_EXTENSIONS) + r")$"),
}
_ANY_MEDIA = re.compile(r"^\d+\.(" + "|".join(IMAGE_EXTENSIONS + AUDIO_EXTENSIONS) + r")$")

_TOP_KEYS = ("segments", "source", "meta", "version")
_SEGMENT_KEYS = {
    "text": ("kind", "text", "loss", "meta"),
    "image": ("kind", "member", "meta"),
    "audio": ("kind", "member", "text", "meta"),
}

# The sample's own JSON, as webdataset names it; never a media member.
_JSON_MEMBER = "json"


def _error(key: str, path: str, message: str) -> DataFormatError:
    where = f"field {path}" if path else "top level"
    return DataFormatError(f"sample {key!r} {where}: {message}")


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _check_keys(key: str, path: str, obj: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(k for k in obj if k not in allowed)
    if unknown:
        raise _error(
            key,
            path,
            f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}",
        )


def _check_meta(key: str, path: str, obj: Mapping[str, Any]) -> None:
    if "meta" in obj and not isinstance(obj["meta"], dict):
        raise _error(key, f"{path}meta", f"must be an object, got {_type_name(obj['meta'])}")


def _check_segment(key: str, index: int, seg: object) -> str | None:
    """Validate one segment; return the member it references, if any."""
    path = f"segments[{index}]"
    if not isinstance(seg, dict):
        raise _error(key, path, f"must be an object, got {_type_name(seg)}")
    kind = seg.get("kind")
    if kind not in _SEGMENT_KEYS:
        raise _error(key, f"{path}.kind", f"{kind!r} is not one of {', '.join(_SEGMENT_KEYS)}")
    _check_keys(key, path, seg, _SEGMENT_KEYS[kind])
    _check_meta(key, f"{path}.", seg)
    if kind == "text":
        text = seg.get("text")
        if not isinstance(text, str) or not text:
            got = "an empty string" if text == "" else _type_name(text)
            raise _error(key, f"{path}.text", f"a text segment needs a non-empty string, got {got}")
        if "loss" in seg and not isinstance(seg["loss"], bool):
            raise _error(key, f"{path}.loss", f"must be true or false, got {_type_name(seg['loss'])}")
        return None
    if "text" in seg and not isinstance(seg["text"], str):
        raise _error(key, f"{path}.text", f"the transcript must be a string, got {_type_name(seg['text'])}")
    member = seg.get("member")
    if not isinstance(member, str):
        raise _error(
            key, f"{path}.member", f"an {kind} segment needs a member name, got {_type_name(member)}"
        )
    if not _MEMBER_PATTERNS[kind].match(member):
        exts = IMAGE_EXTENSIONS if kind == "image" else AUDIO_EXTENSIONS
        raise _error(
            key,
            f"{path}.member",
            f"{member!r} is not a valid {kind} member; expected '<index>.<ext>' with ext one of "
            f"{', '.join(exts)} (e.g. '0.{exts[0]}')",
        )
    return member


def validate_sample_json(key: str, obj: object, members: Collection[str] | None = None) -> None:
    """Check a decoded ``KEY.json`` object against the schema; raise :class:`DataFormatError`.

    ``members`` are the names of the sample's other tar members without the ``KEY.``
    prefix (``{"json", "0.jpg", "1.wav"}``). When given, every referenced member must be
    there and every member must be referenced: a media file no segment uses means the
    sample was built wrong, and any other member (``.pyd``, ``.pt``) is never decoded.
    """
    if not isinstance(obj, dict):
        raise _error(key, "", f"must be a JSON object, got {_type_name(obj)}")
    _check_keys(key, "", obj, _TOP_KEYS)
    if "version" in obj:
        version = obj["version"]
        # bool is an int in Python; `true` is not a version.
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise _error(key, "version", f"must be a positive integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise _error(
                key,
                "version",
                f"schema version {version} is newer than this mmpretrain reads "
                f"({SCHEMA_VERSION}); upgrade mmpretrain-lm to read these shards",
            )
    if "source" in obj and not isinstance(obj["source"], str):
        raise _error(key, "source", f"must be a string, got {_type_name(obj['source'])}")
    _check_meta(key, "", obj)
    if "segments" not in obj:
        raise _error(key, "segments", "is missing; a sample needs a non-empty list of segments")
    segments = obj["segments"]
    if not isinstance(segments, list):
        raise _error(key, "segments", f"must be a list, got {_type_name(segments)}")
    if not segments:
        raise _error(key, "segments", "is empty; a sample needs at least one segment")
    referenced: dict[str, int] = {}
    for i, seg in enumerate(segments):
        member = _check_segment(key, i, seg)
        if member is not None:
            referenced.setdefault(member, i)
    if members is None:
        return
    available = sorted(m for m in members if m != _JSON_MEMBER)
    listing = ", ".join(available) if available else "none"
    for member, i in referenced.items():
        if member not in members:
            raise _error(
                key,
                f"segments[{i}].member",
                f"{member!r} is not a member of the sample (members: {listing})",
            )
    for member in available:
        if not _ANY_MEDIA.match(member):
            raise _error(
                key,
                "",
                f"tar member {key}.{member} has an extension this format does not allow "
                f"(allowed: json, {', '.join(IMAGE_EXTENSIONS + AUDIO_EXTENSIONS)}); "
                "rebuild the shard without it",
            )
        if member not in referenced:
            raise _error(
                key,
                "segments",
                f"media member {member!r} is in the tar but no segment references it",
            )


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            # json.loads would silently keep the last one; a writer bug should not vanish.
            raise ValueError(f"duplicate key {name!r}")
        out[name] = value
    return out


def _reject_constant(name: str) -> Any:
    # json.loads accepts NaN and Infinity, which are not JSON (the writer refuses them)
    raise ValueError(f"{name} is not valid JSON")


def parse_sample_json(key: str, raw: bytes, members: Collection[str] | None = None) -> dict[str, Any]:
    """Decode ``KEY.json`` bytes (strict UTF-8 JSON), validate them, return the object."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            f"sample {key!r}: {key}.json is not valid UTF-8 (byte {exc.start}): {exc.reason}"
        ) from None
    try:
        obj = json.loads(text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant)
        validate_sample_json(key, obj, members)
    except ValueError as exc:  # JSONDecodeError is a ValueError, as is a duplicate key
        raise DataFormatError(f"sample {key!r}: {key}.json is not valid JSON: {exc}") from None
    except RecursionError:  # "[[[[...": a hostile file must not crash the reader
        raise DataFormatError(f"sample {key!r}: {key}.json is nested too deeply") from None
    return obj


def sample_from_json(key: str, obj: object, media: Mapping[str, bytes]) -> Sample:
    """Build a :class:`Sample` from a ``KEY.json`` object and its media bytes by member name.

    ``media`` maps member names (``"0.jpg"``) to their still-encoded bytes; it is validated
    together with ``obj``, so missing or unreferenced media raise :class:`DataFormatError`.
    """
    validate_sample_json(key, obj, members=media.keys())
    assert isinstance(obj, dict)  # checked above; narrows the type
    segments = []
    for seg in obj["segments"]:
        member = seg.get("member")
        segments.append(
            Segment(
                kind=seg["kind"],
                text=seg.get("text"),
                data=bytes(media[member]) if member is not None else None,
                meta=dict(seg.get("meta", {})),
                member=member,
                loss=seg.get("loss", True),
            )
        )
    return Sample(
        key=key,
        source=obj.get("source", ""),
        segments=segments,
        meta=dict(obj.get("meta", {})),
    )
