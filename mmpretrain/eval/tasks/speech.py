"""Speech tasks: LibriSpeech ASR (WER) and spoken-question answering JSONL.

Files (no downloads; paths are config keys):

- ``librispeech``: LibriSpeech split folders as released (``LibriSpeech/test-clean/``):
  ``SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt``, one ``UTTERANCE-ID TRANSCRIPT`` line per
  utterance, audio ``UTTERANCE-ID.flac`` beside it. ``root`` is evaluated (default
  ``test-clean``), ``demo_root`` gives demonstrations (default ``dev-clean``). Transcripts
  are lower-cased for prompts and references (``lowercase``; WER normalizes case anyway).
- ``spoken_qa``: JSONL, one object per line: ``{"audio": "clips/q1.flac", "question":
  "What colour is the car?", "answer": "red"}`` (``answer`` may be a list of acceptable
  answers; optional ``id``; optional ``choices`` turns the task into ranking). ``audio``
  is relative to the JSONL file's folder. ``question`` is text shown after the audio (use
  ``""`` when the question is spoken in the clip). Metric: normalized exact match
  (``accuracy``); ``path`` is evaluated, ``demo_path`` gives demonstrations (default: the
  same file, the engine excluding the query).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from mmpretrain.errors import DataFormatError
from mmpretrain.registry import TASKS

from ..types import EvalExample, TaskKind, TaskSpec
from . import TaskConfig
from .common import check_nonempty, field, lazy_media, read_jsonl, require, spec

ASR_TEMPLATE = "<audio>Transcript: {answer}"
SPOKEN_QA_TEMPLATE = "<audio>Question: {question} Answer: {answer}"


class LibriSpeechConfig(TaskConfig):
    """LibriSpeech ASR (split folders with *.trans.txt and FLAC audio); WER."""

    name: Literal["librispeech"] = "librispeech"
    root: Path = Path("datasets/LibriSpeech/test-clean")
    """Split folder evaluated (SPEAKER/CHAPTER/*.trans.txt + *.flac)."""
    demo_root: Path = Path("datasets/LibriSpeech/dev-clean")
    """Split folder demonstrations are drawn from."""
    lowercase: bool = True
    """Lower-case the (upper-case) LibriSpeech transcripts."""


class SpokenQAConfig(TaskConfig):
    """Spoken question answering from JSONL {audio, question, answer}; exact match."""

    name: Literal["spoken_qa"] = "spoken_qa"
    path: Path = Path("datasets/spoken_qa/test.jsonl")
    """JSONL of the evaluated split."""
    demo_path: Path | None = None
    """JSONL of the demonstration split (None: path, query excluded by the engine)."""
    metric: Literal["accuracy", "vqa_accuracy", "wer"] = "accuracy"
    """How answers are scored."""


def load_librispeech(cfg: LibriSpeechConfig, root: Path, key: str) -> list[EvalExample]:
    """Every utterance under ``root`` (transcript files in sorted path order)."""
    require(root, cfg.name, key, "directory")
    out = []
    for trans in sorted(root.rglob("*.trans.txt")):
        for n, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            utt, _, text = line.strip().partition(" ")
            if not text:
                raise DataFormatError(f"{trans}:{n}: expected 'UTTERANCE-ID TRANSCRIPT', got {line!r}")
            audio = trans.parent / f"{utt}.flac"
            text = text.lower() if cfg.lowercase else text
            out.append(
                EvalExample(
                    utt, load_segments=lazy_media(("audio", audio)), answers=[text], meta={"file": str(audio)}
                )
            )
    return check_nonempty(out, cfg.name, "utterances (*.trans.txt files)", root)


@TASKS.register("librispeech", config=LibriSpeechConfig)
def build_librispeech(cfg: LibriSpeechConfig) -> TaskSpec:
    """LibriSpeech speech recognition."""
    return spec(
        cfg.name,
        kind="generate",
        metric="wer",
        template=ASR_TEMPLATE,
        cfg=cfg,
        queries=lambda: load_librispeech(cfg, cfg.root, "root"),
        demos=lambda: load_librispeech(cfg, cfg.demo_root, "demo_root"),
        max_new_tokens=128,
        description=(type(cfg).__doc__ or "").strip().splitlines()[0],
        files={"root": str(cfg.root), "demo_root": str(cfg.demo_root)},
    )


def load_spoken_qa(cfg: SpokenQAConfig, path: Path, key: str) -> list[EvalExample]:
    """The rows of a spoken-QA JSONL file."""
    out = []
    for n, row in read_jsonl(path, cfg.name, key):
        where = f"{path}:{n}"
        audio = path.parent / field(row, "audio", where)
        answer = field(row, "answer", where)
        answers = [str(a) for a in answer] if isinstance(answer, list) else [str(answer)]
        choices = row.get("choices")
        if choices is not None and (not isinstance(choices, list) or answers[0] not in choices):
            raise DataFormatError(f"{where}: 'choices' must be a list holding the answer {answers[0]!r}")
        out.append(
            EvalExample(
                str(row.get("id", f"{path.stem}:{n}")),
                load_segments=lazy_media(("audio", audio)),
                question=str(field(row, "question", where)),
                answers=answers,
                choices=choices,
                label=answers[0] if choices else None,
                meta={"file": str(audio)},
            )
        )
    return check_nonempty(out, cfg.name, "rows", path)


@TASKS.register("spoken_qa", config=SpokenQAConfig)
def build_spoken_qa(cfg: SpokenQAConfig) -> TaskSpec:
    """Spoken question answering."""
    demo_path = cfg.demo_path or cfg.path
    queries = load_spoken_qa(cfg, cfg.path, "path") if cfg.path.is_file() else None
    kind: TaskKind = "classify" if queries and all(ex.choices for ex in queries) else "generate"
    return spec(
        cfg.name,
        kind=kind,
        metric=cfg.metric,
        template=SPOKEN_QA_TEMPLATE,
        cfg=cfg,
        queries=(lambda: queries) if queries is not None else (lambda: load_spoken_qa(cfg, cfg.path, "path")),
        demos=lambda: load_spoken_qa(cfg, demo_path, "demo_path" if cfg.demo_path else "path"),
        max_new_tokens=10,
        description=(type(cfg).__doc__ or "").strip().splitlines()[0],
        files={"path": str(cfg.path), "demo_path": str(demo_path)},
    )
