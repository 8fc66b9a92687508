"""`--format asr`: speech recognition corpora -> audio-then-transcript samples.

Two layouts, told apart by the files ``--input`` names (a file, a directory or a glob):

- a manifest, NeMo style (``.jsonl``/``.json``, or any other file that is not a
  ``.trans.txt``): one JSON object per line with ``audio_filepath`` (absolute, or relative
  to ``--audio-dir``, default the manifest's directory), ``duration`` (seconds) and
  ``text``; a file holding one JSON list of such objects is read too. Other scalar fields
  (``speaker``, ``lang``, ...) go into the sample's metadata. An ``offset`` (a cut of a
  longer file) is not supported: such lines are skipped (``unsupported_offset``).
- a LibriSpeech folder: every ``SPEAKER-CHAPTER.trans.txt`` below it, in path order
  (other files there are ignored), with lines ``SPEAKER-CHAPTER-UTT TRANSCRIPT`` and the
  audio ``SPEAKER-CHAPTER-UTT.flac`` beside the transcript file.

Each utterance becomes one sample: the audio segment (16 kHz FLAC; its transcript is the
segment's ``text``) followed by a text segment with the transcript, so the language model
learns to transcribe. Transcripts are kept as given (LibriSpeech's are upper case).
Sample metadata: ``duration`` as listed (manifests), ``speaker``/``chapter``/``utterance``
(LibriSpeech). Malformed lines (not JSON, a missing or mistyped field, a transcript line
without a transcript) are skipped with file and line; missing or unreadable audio is
skipped by the build (``missing_audio``, ``bad_audio``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmpretrain.errors import UserError

from .formats import RecordStream, input_files, register_format
from .options import BuildOptions
from .records import RecordSegment, RecordSkip, SourceRecord, text_segment

TRANSCRIPT_SUFFIX = ".trans.txt"
_UTTERANCE_ID = re.compile(r"[A-Za-z0-9_-]+")
_KNOWN_FIELDS = ("audio_filepath", "duration", "text", "offset")


def _display_name(path: Path, options: BuildOptions) -> str:
    """The file as skips name it: relative to an input directory, else its name."""
    if options.input.is_dir():
        try:
            return path.relative_to(options.input).as_posix()
        except ValueError:
            pass
    return path.name


def _lines(path: Path, name: str) -> Iterator[tuple[str, str] | RecordSkip]:
    """``(where, line)`` for each non-blank line of ``path``; a ``bad_utf8`` skip for a line
    that is not UTF-8."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            where = f"{name}:{number}"
            try:
                yield where, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RecordSkip("bad_utf8", where, f"not UTF-8 text (byte {exc.start} of the line)")


def _starts_with_list(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    return head.startswith(b"[")


def _manifest_entries(path: Path, name: str) -> Iterator[tuple[str, Any] | RecordSkip]:
    """``(where, value)`` per manifest entry: one per JSON line, or per item of a JSON list."""
    if _starts_with_list(path):
        try:
            items = json.loads(path.read_text(encoding="utf-8-sig"))
        except UnicodeDecodeError as exc:
            yield RecordSkip("bad_utf8", name, f"not UTF-8 text (byte {exc.start})")
            return
        except json.JSONDecodeError as exc:
            yield RecordSkip("invalid_json", f"{name}:{exc.lineno}", f"not valid JSON: {exc.msg}")
            return
        except RecursionError:  # "[[[[...": hostile input must not crash the build
            yield RecordSkip("invalid_json", name, "not valid JSON: nested too deeply")
            return
        if not isinstance(items, list):
            yield RecordSkip("invalid_json", name, "expected a JSON list of utterances or JSON Lines")
            return
        for index, item in enumerate(items):
            yield f"{name}:[{index}]", item
        return
    for entry in _lines(path, name):
        if isinstance(entry, RecordSkip):
            yield entry
            continue
        where, line = entry
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            yield RecordSkip("invalid_json", where, f"not valid JSON: {exc.msg} at column {exc.colno}")
        except RecursionError:
            yield RecordSkip("invalid_json", where, "not valid JSON: nested too deeply")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _manifest_problem(item: object) -> tuple[str, str] | None:
    """``(reason, detail)`` when a manifest entry cannot be used, else None."""
    if not isinstance(item, dict):
        return "bad_record", f"expected a JSON object, got {type(item).__name__}"
    for field in ("audio_filepath", "duration", "text"):
        if field not in item:
            fields = ", ".join(sorted(item)[:10]) or "none"
            return "missing_field", f"no field {field!r} (fields: {fields})"
    path, duration, text = item["audio_filepath"], item["duration"], item["text"]
    if not isinstance(path, str) or not path.strip():
        return "bad_audio_path", f"'audio_filepath' must be a non-empty path string, got {path!r}"
    if "://" in path:
        return "bad_audio_path", f"{path} is a URL; download the files first and give local paths"
    if not _is_number(duration) or duration < 0:
        return "bad_duration", f"'duration' must be a non-negative number of seconds, got {duration!r}"
    if not isinstance(text, str):
        return "bad_text", f"'text' must be a string, got {type(text).__name__}"
    if not text.strip():
        return "empty_text", "the transcript is empty"
    offset = item.get("offset", 0)
    if offset not in (0, None):
        return "unsupported_offset", f"offset {offset!r}: cut the utterance out of its file first"
    return None


def utterance(
    key: str, where: str, audio: RecordSegment, transcript: str, meta: dict[str, Any]
) -> SourceRecord:
    """One ASR sample: the audio (transcript as its text), then the transcript as text."""
    segments = (audio, text_segment(transcript))
    return SourceRecord(key, where, segments, meta)


def _manifest_records(path: Path, options: BuildOptions, first: int) -> Iterator[SourceRecord | RecordSkip]:
    name = _display_name(path, options)
    root = options.audio_dir if options.audio_dir is not None else path.parent
    number = first
    for entry in _manifest_entries(path, name):
        if isinstance(entry, RecordSkip):
            yield entry
            continue
        where, item = entry
        problem = _manifest_problem(item)
        if problem is not None:
            yield RecordSkip(problem[0], where, problem[1])
            continue
        transcript = item["text"].strip()
        audio = RecordSegment("audio", text=transcript, path=root / item["audio_filepath"].strip())
        meta = {"source": "asr", "duration": item["duration"]}
        meta.update(
            {
                k: v
                for k, v in item.items()
                if k not in _KNOWN_FIELDS and (isinstance(v, str | bool) or _is_number(v))
            }
        )
        yield utterance(f"asr/{number:09d}", where, audio, transcript, meta)
        number += 1


def _librispeech_records(path: Path, options: BuildOptions) -> Iterator[SourceRecord | RecordSkip]:
    name = _display_name(path, options)
    for entry in _lines(path, name):
        if isinstance(entry, RecordSkip):
            yield entry
            continue
        where, line = entry
        parts = line.strip().split(maxsplit=1)
        utt = parts[0]
        if not _UTTERANCE_ID.fullmatch(utt):
            yield RecordSkip(
                "bad_utterance_id", where, f"utterance id {utt!r} is not letters, digits, - and _"
            )
            continue
        if len(parts) < 2:
            yield RecordSkip("missing_transcript", where, f"utterance {utt} has no transcript")
            continue
        transcript = " ".join(parts[1].split())
        audio = RecordSegment("audio", text=transcript, path=path.parent / f"{utt}.flac")
        ids = utt.split("-")
        meta: dict[str, Any] = {"source": "librispeech", "utterance": utt}
        if len(ids) == 3:
            meta.update(speaker=ids[0], chapter=ids[1])
        yield utterance(f"librispeech/{utt}", where, audio, transcript, meta)


@register_format(
    "asr",
    "ASR manifest (.jsonl: audio_filepath, duration, text) or LibriSpeech folder -> audio + transcript",
    "mmpt data build --format asr --input LibriSpeech/test-clean --out shards/librispeech",
)
def parse_asr(options: BuildOptions) -> RecordStream:
    """One record per utterance: LibriSpeech ``*.trans.txt`` files and manifests below
    ``--input``, in path order."""
    files = input_files(options, (TRANSCRIPT_SUFFIX, ".jsonl", ".json"))
    transcripts = [p for p in files if p.name.endswith(TRANSCRIPT_SUFFIX)]
    if transcripts and options.input.is_dir():
        files = transcripts  # a LibriSpeech folder: other .json files there are not manifests
    number = 0
    for path in files:
        if path.name.endswith(TRANSCRIPT_SUFFIX):
            yield from _librispeech_records(path, options)
            continue
        for item in _manifest_records(path, options, number):
            if isinstance(item, SourceRecord):
                number += 1
            yield item
