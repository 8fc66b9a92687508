"""`--format tts-interleaved`: synthetic interleaved speech-text from any text corpus.

As in synthetic interleaved speech-text pre-training, each document of a text corpus
(read like `--format text`: ``.jsonl``/``.parquet`` with ``--text-field``, text files,
``shakespeare``) is cut into spans of about ``--tts-span-words`` words, ending at a
sentence end (``.!?;:`` or a blank line) once half the length is reached, else after
exactly that many words. Each span is spoken with probability ``--tts-ratio``, drawn from
``numpy.random.default_rng([seed, document number])`` (the same spans for the same seed,
whatever the worker count); spans without a letter or digit, or over
:data:`MAX_SPOKEN_CHARS`, stay text. A spoken span becomes an audio segment synthesized by
espeak-ng (``--voice``, ``--tts-rate`` words per minute, 16 kHz; see
:mod:`~mmpretrain.data.build.tts`) whose transcript (the segment's ``text``) is the span's
words joined by single spaces. With ``--tts-mode replace`` the audio stands in for the
span's text; with ``accompany`` the audio is followed by the span's text. Consecutive text
spans form one text segment, the document's own characters between the first and last
word. Sample metadata: ``spans``, ``spoken_spans``, ``voice``, ``tts_rate``, ``tts_mode``;
the source name is ``tts-<corpus>`` (``tts-shakespeare``, ``tts-wiki`` for
``wiki.jsonl``).

Synthesized clips that repeat (a refrain, a stage direction) are exact duplicates of each
other, but not crawled duplicates: media deduplication leaves synthesized speech alone, so
every document keeps all of its words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmpretrain.errors import UserError

from .formats import RecordStream, register_format
from .options import BuildOptions
from .records import RecordSegment, RecordSkip, SourceRecord, text_segment
from .text import text_documents

MAX_SPOKEN_CHARS = 400
"""Longer spans (long tokens: URLs, tables) are kept as text."""

MODES = ("replace", "accompany")

_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?;:][\"'”’)\]]*$")


@dataclass(frozen=True)
class Span:
    """Words ``start``..``end`` (character offsets into the document) of one span."""

    start: int
    end: int
    words: tuple[str, ...]

    @property
    def transcript(self) -> str:
        """The span's words joined by single spaces (what is spoken)."""
        return " ".join(self.words)

    @property
    def speakable(self) -> bool:
        """Has a letter or digit and is at most :data:`MAX_SPOKEN_CHARS` long."""
        text = self.transcript
        return len(text) <= MAX_SPOKEN_CHARS and any(c.isalnum() for c in text)


def split_spans(text: str, span_words: int) -> list[Span]:
    """``text`` cut into spans of at most ``span_words`` words; a span ends early at a
    sentence end or blank line once it has at least half that many."""
    if span_words < 1:
        raise ValueError("split_spans: span_words must be positive")
    matches = list(_WORD.finditer(text))
    spans: list[Span] = []
    current: list[re.Match[str]] = []
    half = (span_words + 1) // 2
    for i, match in enumerate(matches):
        current.append(match)
        gap = text[match.end() : matches[i + 1].start()] if i + 1 < len(matches) else ""
        boundary = bool(_SENTENCE_END.search(match.group())) or gap.count("\n") >= 2
        if len(current) >= span_words or (len(current) >= half and boundary):
            spans.append(Span(current[0].start(), current[-1].end(), tuple(m.group() for m in current)))
            current = []
    if current:
        spans.append(Span(current[0].start(), current[-1].end(), tuple(m.group() for m in current)))
    return spans


def spoken_mask(spans: list[Span], ratio: float, seed: int, document: int) -> list[bool]:
    """Which spans are spoken: each with probability ``ratio`` from a generator keyed by
    (``seed``, ``document``); unspeakable spans never are."""
    draws = np.random.default_rng([seed, document]).random(len(spans))
    return [bool(d < ratio) and span.speakable for d, span in zip(draws, spans, strict=True)]


def document_segments(
    text: str, spans: list[Span], spoken: list[bool], mode: str
) -> tuple[RecordSegment, ...]:
    """The segments of one document: text runs and spoken spans, in order."""
    segments: list[RecordSegment] = []
    run: list[Span] = []

    def flush() -> None:
        if run:
            segments.append(text_segment(text[run[0].start : run[-1].end]))
            run.clear()

    for index, (span, speak) in enumerate(zip(spans, spoken, strict=True)):
        if not speak:
            run.append(span)
            continue
        flush()
        transcript = span.transcript
        segments.append(RecordSegment("audio", speak=transcript, text=transcript, meta={"span": index}))
        if mode == "accompany":
            segments.append(text_segment(text[span.start : span.end]))
    flush()
    return tuple(segments)


def _corpus_name(options: BuildOptions) -> str:
    raw = str(options.input)
    if raw.split(":", 1)[0] == "shakespeare":
        return "shakespeare"
    path = Path(raw)
    name = path.name if path.is_dir() else path.name.split(".", 1)[0]
    if not name or any(c in name for c in "*?["):
        name = path.parent.name
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")
    return cleaned or "corpus"


def _check(options: BuildOptions) -> None:
    if options.tts_mode not in MODES:
        raise UserError(f"--tts-mode must be one of {', '.join(MODES)}, got {options.tts_mode!r}")
    if options.tts_span_words < 1:
        raise UserError("--tts-span-words must be positive")
    if not 0.0 <= options.tts_ratio <= 1.0:
        raise UserError(f"--tts-ratio must be between 0 and 1, got {options.tts_ratio}")
    if options.tts_ratio > 0:
        from .tts import synthesize

        synthesize("check", options.voice, options.tts_rate)  # espeak-ng missing, unknown voice


@register_format(
    "tts-interleaved",
    "any text corpus -> documents with spans spoken by espeak-ng (audio with its transcript)",
    "mmpt data build --format tts-interleaved --input shakespeare --tts-ratio 0.5 --out shards/tts",
)
def parse_tts_interleaved(options: BuildOptions) -> RecordStream:
    """One record per document of ``--input``, some of its spans spoken."""
    _check(options)
    source = f"tts-{_corpus_name(options)}"
    number = 0
    for item in text_documents(options):
        if isinstance(item, RecordSkip):
            yield item
            continue
        spans = split_spans(item.text, options.tts_span_words)
        if not spans:
            yield RecordSkip("empty_document", item.key, "the document has no words")
            continue
        spoken = spoken_mask(spans, options.tts_ratio, options.seed, number)
        segments = document_segments(item.text, spans, spoken, options.tts_mode)
        meta = {
            "source": source,
            "spans": len(spans),
            "spoken_spans": sum(spoken),
            "voice": options.voice,
            "tts_rate": options.tts_rate,
            "tts_mode": options.tts_mode,
        }
        yield SourceRecord(f"tts/{number:09d}", item.key, segments, meta)
        number += 1
