"""What a format parser hands to the builder: records of segments that name their media.

Parsing a dataset's own layout is cheap and happens in the main process; reading,
resizing and encoding media (and synthesizing speech) is the expensive part and happens in
worker processes (:mod:`mmpretrain.data.build.materialize`). A parser therefore yields
:class:`SourceRecord` objects whose media segments name a file (``path``), carry bytes
already in hand (``data``: zip members, Parquet cells) or ask for speech synthesis
(``speak``), plus a :class:`RecordSkip` for every input record it cannot use, with the
file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

RecordKind = Literal["text", "image", "audio"]


@dataclass(frozen=True)
class RecordSegment:
    """One segment of a record, before its media is read.

    A text segment has ``text`` (and ``loss=False`` when it must carry no loss: a prompt or
    a user turn). A media segment has exactly one of ``path`` (a local file), ``data`` (the
    file's bytes) and, for audio, ``speak`` (text to synthesize); an audio segment's
    ``text`` is its transcript.
    """

    kind: RecordKind
    text: str | None = None
    path: Path | None = None
    data: bytes | None = None
    speak: str | None = None
    loss: bool = True
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind == "text":
            if not isinstance(self.text, str):
                raise ValueError("RecordSegment: a text segment needs text")
            return
        sources = [self.path is not None, self.data is not None, self.speak is not None]
        if sum(sources) != 1:
            raise ValueError(f"RecordSegment({self.kind}): give exactly one of path, data and speak")
        if self.speak is not None and self.kind != "audio":
            raise ValueError("RecordSegment: only audio can be synthesized from text (speak)")

    @property
    def is_media(self) -> bool:
        """True for image and audio segments."""
        return self.kind != "text"


@dataclass(frozen=True)
class SourceRecord:
    """One input document: its shard ``key``, where it came from (``"file.jsonl:17"``),
    its segments in order and sample-level metadata."""

    key: str
    where: str
    segments: tuple[RecordSegment, ...]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordSkip:
    """An input record that cannot become a sample: a slug ``reason`` (``"missing_image"``),
    ``where`` (``"file.jsonl:17"``) and what is wrong."""

    reason: str
    where: str
    detail: str = ""


def text_segment(text: str, loss: bool = True, **meta: Any) -> RecordSegment:
    """A text segment (``loss=False``: no loss on it)."""
    return RecordSegment("text", text=text, loss=loss, meta=dict(meta))
