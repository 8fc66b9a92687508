"""Helpers the task loaders share: file checks with clear errors, lazy media, JSON reading."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mmpretrain.data.decoders import DecodedSegment, decode_audio, decode_image
from mmpretrain.errors import DataFormatError, UserError

from ..types import EvalExample, PromptTemplate, TaskKind, TaskSpec


def require(path: Path, task: str, key: str, what: str = "file") -> Path:
    """``path`` if it exists, else a UserError naming the task, the path and the key to set."""
    exists = path.is_dir() if what == "directory" else path.is_file()
    if not exists:
        raise UserError(
            f"task {task}: {what} not found: {path} (set it with {key}=PATH; see `mmpt list tasks`)"
        )
    return path


def read_json(path: Path, task: str, key: str) -> Any:
    """A JSON file's content; a missing or invalid file raises a UserError naming it."""
    require(path, task, key)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"task {task}: {path} is not valid JSON ({exc})") from None


def read_jsonl(path: Path, task: str, key: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-empty line of a JSONL file."""
    require(path, task, key)
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"task {task}: {path}:{n} is not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataFormatError(f"task {task}: {path}:{n} must be a JSON object")
            yield n, row


def field(row: dict[str, Any], key: str, where: str) -> Any:
    """``row[key]``; a missing key is a DataFormatError naming the place."""
    if key not in row:
        raise DataFormatError(f"{where}: missing key {key!r} (has {', '.join(sorted(row)) or 'no keys'})")
    return row[key]


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"media file not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None


def image_segment(path: Path) -> DecodedSegment:
    """An image file decoded as a segment (our allow-listed decoder: JPEG/PNG/WebP)."""
    try:
        image = decode_image(_read_bytes(path))
    except DataFormatError as exc:
        raise DataFormatError(f"{path}: {exc}") from None
    return DecodedSegment("image", image=image, meta={"path": str(path)})


def audio_segment(path: Path, transcript: str | None = None) -> DecodedSegment:
    """An audio file (FLAC/WAV) decoded as a mono segment."""
    try:
        audio, rate = decode_audio(_read_bytes(path))
    except DataFormatError as exc:
        raise DataFormatError(f"{path}: {exc}") from None
    return DecodedSegment("audio", text=transcript, audio=audio, sample_rate=rate, meta={"path": str(path)})


def lazy_media(*items: tuple[str, Path]) -> Callable[[], list[DecodedSegment]]:
    """A loader of media files (``("image", path)`` / ``("audio", path)``), decoded when called."""

    def load() -> list[DecodedSegment]:
        return [image_segment(p) if kind == "image" else audio_segment(p) for kind, p in items]

    return load


def spec(
    name: str,
    *,
    kind: TaskKind,
    metric: str,
    template: str,
    cfg: Any,
    queries: Callable[[], list[EvalExample]],
    demos: Callable[[], list[EvalExample]],
    max_new_tokens: int,
    description: str,
    files: dict[str, str],
    separator: str = "\n",
    stop: tuple[str, ...] = ("\n",),
) -> TaskSpec:
    """A TaskSpec with the config's template / max_new_tokens overrides applied."""
    if cfg.max_demos is not None:
        all_demos = demos

        def demos() -> list[EvalExample]:
            return all_demos()[: cfg.max_demos]

    return TaskSpec(
        name=name,
        kind=kind,
        metric=metric,
        template=PromptTemplate(cfg.template or template, separator=separator, stop=stop),
        load_queries=queries,
        load_demos=demos,
        max_new_tokens=cfg.max_new_tokens or max_new_tokens,
        description=description,
        files=files,
    )


def check_nonempty(examples: list[EvalExample], task: str, what: str, source: Path) -> list[EvalExample]:
    """``examples``, or a UserError when the file held none (wrong split or file)."""
    if not examples:
        raise UserError(f"task {task}: no {what} found in {source}; check the file and split options")
    return examples
