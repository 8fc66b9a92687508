"""`--format conversations`: supervised conversations with images/audio -> samples whose
loss covers only the assistant's replies (LLaVA-style second-stage data on the same path).

Input: a JSON list (``.json``, e.g. LLaVA-Instruct ``llava_instruct_150k.json``) or JSON
Lines (``.jsonl``) of items::

    {"id": "000000033471", "image": "000000033471.jpg",        # optional; or a list
     "audio": "clip.flac",                                    # optional; or a list
     "conversations": [{"from": "human", "value": "<image>\\nWhat is in the photo?"},
                       {"from": "gpt", "value": "A bus on a city street."}]}

Roles: ``human``/``user``, ``gpt``/``assistant``, ``system``; OpenAI-style turns
(``"messages"`` with ``role``/``content`` strings) are read the same way.

Every turn is rendered with one fixed plain-text template::

    System: {text}\\n
    User: {text}\\n
    Assistant: {reply}\\n

The role prefixes and the system and user turns are text segments with ``loss: false``;
only each assistant reply, with its trailing newline, carries loss (training appends EOS
after the document, which carries loss too: the model learns to stop after a reply).
An ``<image>`` (``<audio>``) marker in a turn puts that item there, the text split around
it; items beyond the markers go at the start of the first user turn followed by a newline,
as LLaVA does. Items with more markers than media, unknown roles, non-string or empty
replies, or no assistant reply are skipped and counted with file and index/line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmpretrain.errors import DataFormatError

from .captions import jsonl_objects, key_part, media_segment, read_json
from .formats import RecordStream, input_files, register_format
from .options import BuildOptions
from .records import RecordSegment, RecordSkip, SourceRecord, text_segment

ROLES: dict[str, str] = {
    "system": "System",
    "human": "User",
    "user": "User",
    "gpt": "Assistant",
    "assistant": "Assistant",
    "chatgpt": "Assistant",
}
"""Role names in the data -> the speaker name of the template."""

ASSISTANT = "Assistant"

MARKERS: dict[str, Literal["image", "audio"]] = {"<image>": "image", "<audio>": "audio"}
"""Placeholders in turn text -> the kind of media item they place."""

_MARKER = re.compile("|".join(re.escape(m) for m in MARKERS))


class _Malformed(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass
class _Segments:
    """Collects segments, merging adjacent text with the same loss flag."""

    segments: list[RecordSegment] = field(default_factory=list)
    text: str = ""
    loss: bool = False

    def add_text(self, text: str, loss: bool) -> None:
        if not text:
            return
        if self.text and loss != self.loss:
            self.flush()
        self.text += text
        self.loss = loss

    def add_media(self, segment: RecordSegment) -> None:
        self.flush()
        self.segments.append(segment)

    def flush(self) -> None:
        if self.text:
            self.segments.append(text_segment(self.text, loss=self.loss))
        self.text = ""


def _paths(item: dict[str, Any], kind: str) -> list[object]:
    value = item.get(kind)
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _turns(item: dict[str, Any]) -> list[tuple[str, str]]:
    """``(speaker, text)`` of each turn; raises :class:`_Malformed`."""
    turns = item.get("conversations", item.get("messages"))
    if not isinstance(turns, list) or not turns:
        raise _Malformed("bad_record", "'conversations' must be a non-empty list of turns")
    parsed = []
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise _Malformed("bad_turn", f"turn {number} is not an object")
        role = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        speaker = ROLES.get(role.lower()) if isinstance(role, str) else None
        if speaker is None:
            raise _Malformed("bad_role", f"turn {number}: unknown role {role!r} (roles: {', '.join(ROLES)})")
        if not isinstance(text, str):
            raise _Malformed(
                "bad_turn", f"turn {number}: the text must be a string, got {type(text).__name__}"
            )
        if speaker == ASSISTANT and not text.strip():
            raise _Malformed("empty_reply", f"turn {number}: the assistant reply is empty")
        parsed.append((speaker, text.strip()))
    if not any(speaker == ASSISTANT for speaker, _ in parsed):
        raise _Malformed("no_reply", "no assistant turn: nothing to train on")
    return parsed


def _place_unmarked_media(turns: list[tuple[str, str]], media: dict[str, list[RecordSegment]]) -> None:
    """Prepend a marker per item that no turn marks to the first user turn (LLaVA's rule)."""
    found = {kind: 0 for kind in media}
    for _, text in turns:
        for marker in _MARKER.findall(text):
            found[MARKERS[marker]] += 1
    missing = ""
    for marker, kind in MARKERS.items():
        extra = len(media[kind]) - found[kind]
        if extra < 0:
            raise _Malformed(
                "media_marker_mismatch",
                f"{found[kind]} {marker} markers but {len(media[kind])} {kind} item(s) in '{kind}'",
            )
        missing += f"{marker}\n" * extra
    if missing:
        first = next((i for i, (speaker, _) in enumerate(turns) if speaker == "User"), 0)
        speaker, text = turns[first]
        turns[first] = (speaker, missing + text)


def conversation_segments(
    turns: list[tuple[str, str]], media: dict[str, list[RecordSegment]]
) -> list[RecordSegment]:
    """The template rendering of ``turns`` (``(speaker, text)``) with ``media`` (per kind, in
    order) at their markers: no loss except on the assistant replies."""
    out = _Segments()
    queues = {kind: iter(items) for kind, items in media.items()}
    for speaker, text in turns:
        loss = speaker == ASSISTANT
        out.add_text(f"{speaker}: ", False)
        pieces = _MARKER.split(text)
        markers = _MARKER.findall(text)
        for index, piece in enumerate(pieces):
            out.add_text(piece, loss)
            if index < len(markers):
                out.add_media(next(queues[MARKERS[markers[index]]]))
        out.add_text("\n", loss)
    out.flush()
    return out.segments


def _conversation(item: object, where: str, key: str, options: BuildOptions) -> SourceRecord | RecordSkip:
    if not isinstance(item, dict):
        return RecordSkip("bad_record", where, f"expected a JSON object, got {type(item).__name__}")
    try:
        turns = _turns(item)
        media: dict[str, list[RecordSegment]] = {}
        for kind in MARKERS.values():
            media[kind] = []
            for value in _paths(item, kind):
                segment = media_segment(kind, value, options)
                if isinstance(segment, str):
                    raise _Malformed(f"bad_{kind}_path", segment)
                media[kind].append(segment)
        _place_unmarked_media(turns, media)
    except _Malformed as exc:
        return RecordSkip(exc.reason, where, str(exc))
    meta: dict[str, Any] = {"source": "conversations"}
    if isinstance(item.get("id"), (str, int)):
        meta["id"] = item["id"]
    return SourceRecord(key, where, tuple(conversation_segments(turns, media)), meta)


def _entries(path: Path) -> Iterator[tuple[str, Any] | RecordSkip]:
    """``(where, item)`` of each item of a JSON list or JSON Lines file (bad lines: skips)."""
    if path.suffix.lower() == ".jsonl":
        yield from jsonl_objects(path)
        return
    data = read_json(path)
    if not isinstance(data, list):
        raise DataFormatError(
            f"{path}: expected a JSON list of conversation items, got a JSON {type(data).__name__} "
            "(JSON Lines files need the .jsonl extension)"
        )
    for index, item in enumerate(data):
        yield f"{path.name}:[{index}]", item


@register_format(
    "conversations",
    "LLaVA-Instruct-style conversations with images/audio -> loss on assistant replies only",
    "mmpt data build --format conversations --input llava_instruct_150k.json --images-dir coco/train2017 "
    "--out shards/llava-instruct",
)
def parse_conversations(options: BuildOptions) -> RecordStream:
    """One record per conversation, rendered with the fixed User/Assistant template."""
    for path in input_files(options, (".json", ".jsonl")):
        stem = key_part(path.stem)
        for number, entry in enumerate(_entries(path)):
            if isinstance(entry, RecordSkip):
                yield entry
                continue
            where, item = entry
            yield _conversation(item, where, f"conversations/{stem}-{number:09d}", options)
