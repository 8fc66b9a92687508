"""``interleaved_jsonl``: a generic format for your own benchmarks (images, audio, text).

One JSON object per line::

    {"id": "q1",
     "segments": [{"image": "imgs/cat.jpg"}, {"text": "A cat on a sofa."},
                  {"image": "imgs/dog.jpg"}, {"audio": "clips/bark.flac"}],
     "question": "Which animal barks?",
     "answers": ["the dog", "dog"],
     "choices": ["the cat", "the dog"]}

- ``segments`` (required): the item's context in order; each entry has exactly one of
  ``image`` (a JPEG/PNG/WebP path), ``audio`` (a FLAC/WAV path) or ``text``. Media paths are
  relative to ``media_root`` (default: the JSONL file's folder).
- ``question`` (optional): text after the context.
- ``answers`` (list) or ``answer`` (string): the references (for demonstrations, the first
  is shown); required.
- ``choices`` (optional): candidate answers, ranked by log-likelihood; with choices the
  first answer must be one of them and is the label. ``id`` (optional): defaults to the
  line number.

The task classifies when every row has ``choices`` (``kind: auto``), otherwise generates.
``metric`` is any metric name (default ``accuracy``: label match, or normalized exact
match to an answer). The default template is ``{context} Question: {question} Answer:
{answer}`` (``{context} Answer: {answer}`` when rows have no question); set ``template`` to
change it. ``path`` is evaluated; demonstrations come from ``demo_path`` (default: the
same file, the engine excluding the query).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.errors import DataFormatError
from mmpretrain.registry import TASKS

from ..metrics import METRICS
from ..types import EvalExample, TaskSpec
from . import TaskConfig
from .common import audio_segment, check_nonempty, field, image_segment, read_jsonl, spec

QUESTION_TEMPLATE = "{context} Question: {question} Answer: {answer}"
PLAIN_TEMPLATE = "{context} Answer: {answer}"


class InterleavedJsonlConfig(TaskConfig):
    """Your own benchmark: JSONL of {segments: [{image|audio|text}], question, answers, choices}."""

    name: Literal["interleaved_jsonl"] = "interleaved_jsonl"
    path: Path = Path("datasets/my_benchmark/test.jsonl")
    """JSONL of the evaluated split."""
    demo_path: Path | None = None
    """JSONL of the demonstration split (None: path, query excluded by the engine)."""
    media_root: Path | None = None
    """Folder media paths are relative to (None: each JSONL file's folder)."""
    metric: str = "accuracy"
    """Metric name (accuracy, vqa_accuracy, cider, bleu4, roc_auc, wer, cer)."""
    kind: Literal["auto", "generate", "classify"] = "auto"
    """auto: classify when every row has choices, else generate."""


def _segment_loader(entries: list[dict[str, Any]], root: Path, where: str) -> Any:
    for i, entry in enumerate(entries):
        keys = [k for k in ("image", "audio", "text") if k in entry]
        if len(keys) != 1 or not isinstance(entry[keys[0]], str):
            raise DataFormatError(
                f"{where}: segments[{i}] needs exactly one of image, audio, text (a string)"
            )

    def load() -> list[DecodedSegment]:
        out = []
        for entry in entries:
            if "text" in entry:
                out.append(DecodedSegment("text", text=entry["text"]))
            elif "image" in entry:
                out.append(image_segment(root / entry["image"]))
            else:
                out.append(audio_segment(root / entry["audio"]))
        return out

    return load


def load_interleaved(cfg: InterleavedJsonlConfig, path: Path, key: str) -> list[EvalExample]:
    """The rows of an interleaved JSONL file (format in the module docstring)."""
    root = cfg.media_root if cfg.media_root is not None else path.parent
    out = []
    for n, row in read_jsonl(path, cfg.name, key):
        where = f"{path}:{n}"
        segments = field(row, "segments", where)
        if not isinstance(segments, list) or not segments:
            raise DataFormatError(f"{where}: 'segments' must be a non-empty list")
        if "answers" in row:
            answers = row["answers"]
        elif "answer" in row:
            answers = [row["answer"]]
        else:
            raise DataFormatError(f"{where}: needs 'answers' (a list) or 'answer'")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise DataFormatError(f"{where}: 'answers' must be a non-empty list of strings")
        choices = row.get("choices")
        if choices is not None and (not isinstance(choices, list) or answers[0] not in choices):
            raise DataFormatError(
                f"{where}: 'choices' must be a list holding the first answer {answers[0]!r}"
            )
        question = row.get("question")
        out.append(
            EvalExample(
                str(row.get("id", f"{path.stem}:{n}")),
                load_segments=_segment_loader(segments, root, where),
                question=None if question is None else str(question),
                answers=answers,
                choices=choices,
                label=answers[0] if choices else None,
                meta={"file": str(path), "line": n},
            )
        )
    return check_nonempty(out, cfg.name, "rows", path)


@TASKS.register("interleaved_jsonl", config=InterleavedJsonlConfig)
def build_interleaved_jsonl(cfg: InterleavedJsonlConfig) -> TaskSpec:
    """Generic interleaved benchmark from JSONL."""
    if cfg.metric not in METRICS:
        raise DataFormatError(
            f"task {cfg.name}: unknown metric {cfg.metric!r}; known: {', '.join(sorted(METRICS))}"
        )
    queries = load_interleaved(cfg, cfg.path, "path")  # small file, media loaded lazily
    demo_path = cfg.demo_path or cfg.path
    kind = cfg.kind
    if kind == "auto":
        kind = "classify" if all(ex.choices for ex in queries) else "generate"
    has_question = all(ex.question is not None for ex in queries)
    return spec(
        cfg.name,
        kind=kind,
        metric=cfg.metric,
        template=QUESTION_TEMPLATE if has_question else PLAIN_TEMPLATE,
        cfg=cfg,
        queries=lambda: queries,
        demos=lambda: load_interleaved(cfg, demo_path, "demo_path" if cfg.demo_path else "path"),
        max_new_tokens=20,
        description=(type(cfg).__doc__ or "").strip().splitlines()[0],
        files={
            "path": str(cfg.path),
            "demo_path": str(demo_path),
            "media_root": str(cfg.media_root or "(JSONL folder)"),
        },
    )
