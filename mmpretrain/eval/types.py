"""The types few-shot evaluation shares: examples, prompt templates, task specs.

A task loader (``mmpretrain.eval.tasks``) turns local benchmark files into
:class:`EvalExample` objects and wraps them in a :class:`TaskSpec`; the engine builds
k-shot prompts with the task's :class:`PromptTemplate`, predicts, and scores the
predictions with the metric the spec names (``mmpretrain.eval.metrics.score``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.errors import UserError

TaskKind = Literal["generate", "classify"]

PromptPart: TypeAlias = str | DecodedSegment
"""One piece of a rendered prompt: a run of text or one media segment (image or audio)."""

MEDIA_PLACEHOLDERS: dict[str, str] = {"<image>": "image", "<audio>": "audio"}
"""Template placeholder -> the segment kind it stands for."""


class EvalExample:
    """One evaluation item: its media (and text context) plus question and references.

    ``segments``: the item's media, and text context if any, in order (decoded with
    :mod:`mmpretrain.data.decoders` types). Loaders may pass ``load_segments`` instead, a
    function called on first access (the result is kept until :meth:`release`), so that a
    task of thousands of images decodes only the ones a run uses.
    ``question``: the question (VQA, spoken QA, classification prompts) or None.
    ``answers``: the references: captions, the 10 VQA answers, a transcript, the class name.
    ``choices``: candidate answers of a classification item (ranked by log-likelihood).
    ``label``: the correct choice (classification) or None. ``meta``: anything else
    (source file, image id, answer type, ...).
    """

    __slots__ = ("_load", "_segments", "answers", "choices", "id", "label", "meta", "question")

    def __init__(
        self,
        id: str,
        segments: list[DecodedSegment] | None = None,
        *,
        question: str | None = None,
        answers: list[str] | None = None,
        choices: list[str] | None = None,
        label: str | None = None,
        meta: dict[str, Any] | None = None,
        load_segments: Callable[[], list[DecodedSegment]] | None = None,
    ) -> None:
        if (segments is None) == (load_segments is None):
            raise ValueError("EvalExample: pass exactly one of segments and load_segments")
        if choices is not None and label is not None and label not in choices:
            raise ValueError(f"EvalExample {id}: label {label!r} is not one of the choices {choices}")
        self.id = id
        self.question = question
        self.answers: list[str] = list(answers or [])
        self.choices = None if choices is None else list(choices)
        self.label = label
        self.meta: dict[str, Any] = dict(meta or {})
        self._segments = segments
        self._load = load_segments

    @property
    def segments(self) -> list[DecodedSegment]:
        """The decoded segments (loaded on first access when the loader is lazy)."""
        if self._segments is None:
            assert self._load is not None
            self._segments = self._load()
        return self._segments

    @property
    def demo_answer(self) -> str:
        """The answer a demonstration of this example shows: ``label``, else ``answers[0]``.

        Loaders put the most representative reference first (VQA: the most common answer).
        """
        if self.label is not None:
            return self.label
        if not self.answers:
            raise UserError(f"example {self.id} has no answer to show as a demonstration")
        return self.answers[0]

    @property
    def media(self) -> list[DecodedSegment]:
        """The image and audio segments, in order."""
        return [seg for seg in self.segments if seg.kind != "text"]

    def release(self) -> None:
        """Drop decoded media of a lazily loaded example (it is decoded again on next access)."""
        if self._load is not None:
            self._segments = None

    def __repr__(self) -> str:
        loaded = "lazy" if self._segments is None else [s.kind for s in self._segments]
        return (
            f"EvalExample(id={self.id!r}, segments={loaded}, question={self.question!r}, "
            f"answers={self.answers!r}, choices={self.choices!r}, label={self.label!r})"
        )


_SPLIT = re.compile(r"(<image>|<audio>|\{question\}|\{answer\}|\{context\})")


@dataclass(frozen=True)
class PromptTemplate:
    """How one demonstration or query is written around its media.

    ``text`` holds ``<image>`` / ``<audio>`` placeholders (each takes the example's next
    media segment of that kind, in order) and the fields ``{question}`` and ``{answer}``
    (and ``{context}``: all the example's segments, text and media, in order, for
    interleaved items). Examples: ``"<image>Question: {question} Short answer: {answer}"``,
    ``"<image>Output: {answer}"``, ``"<audio>Transcript: {answer}"``.

    A k-shot prompt is ``demo_1 + separator + ... + demo_k + separator + query``: each demo
    rendered with its answer, the query without (it ends right before ``{answer}``; the
    whitespace before ``{answer}`` belongs to the continuation, see :meth:`continuation`).
    Generation stops at any of ``stop``.
    """

    text: str
    separator: str = "\n"
    stop: tuple[str, ...] = ("\n",)

    def __post_init__(self) -> None:
        if self.text.count("{answer}") != 1:
            raise ValueError(f"PromptTemplate {self.text!r}: needs exactly one {{answer}}")
        if "{context}" in self.text and any(p in self.text for p in MEDIA_PLACEHOLDERS):
            raise ValueError(f"PromptTemplate {self.text!r}: use {{context}} or <image>/<audio>, not both")

    @property
    def answer_prefix(self) -> str:
        """The whitespace between the prompt and ``{answer}`` (``" "`` in ``"Answer: {answer}"``)."""
        before = self.text.split("{answer}", 1)[0]
        return before[len(before.rstrip()) :]

    def continuation(self, answer: str) -> str:
        """The text that follows a query prompt when the answer is ``answer``.

        Classification scores the log-likelihood of this for each choice; generation
        output is read after the prompt (strip it before scoring).
        """
        return self.answer_prefix + answer

    def render(self, example: EvalExample, answer: str | None) -> list[PromptPart]:
        """The template filled with ``example``: text runs and media segments, in order.

        ``answer``: the demonstration's answer (usually ``example.answers[0]`` or its
        label), or None for the query, which then ends right before ``{answer}`` with the
        whitespace there removed (it is part of :meth:`continuation`). Adjacent text runs
        are merged; empty ones dropped.
        """
        text = self.text
        if answer is None:
            text = text.split("{answer}", 1)[0].rstrip()
        media = {kind: [s for s in example.segments if s.kind == kind] for kind in ("image", "audio")}
        used = dict.fromkeys(media, 0)
        parts: list[PromptPart] = []

        def add(part: PromptPart) -> None:
            if isinstance(part, str):
                if not part:
                    return
                if parts and isinstance(parts[-1], str):
                    parts[-1] += part
                    return
            parts.append(part)

        for piece in _SPLIT.split(text):
            if piece in MEDIA_PLACEHOLDERS:
                kind = MEDIA_PLACEHOLDERS[piece]
                if used[kind] >= len(media[kind]):
                    raise UserError(
                        f"example {example.id}: the template {self.text!r} needs more {kind} items "
                        f"than the example has ({len(media[kind])})"
                    )
                add(media[kind][used[kind]])
                used[kind] += 1
            elif piece == "{question}":
                add(example.question or "")
            elif piece == "{answer}":
                add(answer or "")
            elif piece == "{context}":
                for seg in example.segments:
                    add(seg.text or "" if seg.kind == "text" else seg)
            else:
                add(piece)
        if "{context}" not in self.text:
            left = {k: len(media[k]) - used[k] for k in media if len(media[k]) > used[k]}
            if left:
                raise UserError(
                    f"example {example.id}: the template {self.text!r} has no place for its "
                    f"{', '.join(f'{n} {k}' for k, n in left.items())} item(s)"
                )
        return parts


@dataclass
class TaskSpec:
    """A built evaluation task: what to ask, how to write it, how to score it.

    ``kind``: ``"generate"`` (greedy decoding, up to ``max_new_tokens``) or ``"classify"``
    (rank each example's ``choices`` by the log-likelihood of
    ``template.continuation(choice)``). ``metric``: a name in
    :data:`mmpretrain.eval.metrics.METRICS`. ``load_demos`` / ``load_queries`` return the
    split demonstrations are drawn from and the evaluated split (called once, cached;
    media decoded lazily). ``files`` documents the local files the task read.
    """

    name: str
    kind: TaskKind
    metric: str
    template: PromptTemplate
    load_queries: Callable[[], list[EvalExample]]
    load_demos: Callable[[], list[EvalExample]]
    max_new_tokens: int = 10
    description: str = ""
    files: dict[str, str] = field(default_factory=dict)
    _queries: list[EvalExample] | None = field(default=None, init=False, repr=False)
    _demos: list[EvalExample] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ("generate", "classify"):
            raise ValueError(f"TaskSpec {self.name}: kind must be generate or classify, got {self.kind!r}")

    def queries(self) -> list[EvalExample]:
        """The evaluated examples, in a fixed order (``--limit N`` takes the first N)."""
        if self._queries is None:
            self._queries = self.load_queries()
        return self._queries

    def demos(self) -> list[EvalExample]:
        """The examples demonstrations are drawn from (the engine excludes the query by id)."""
        if self._demos is None:
            self._demos = self.load_demos()
        return self._demos
