"""Visual question answering tasks: VQAv2, OK-VQA, TextVQA, VizWiz (official VQA accuracy).

Files (no downloads; paths are config keys; ``demo_*`` keys name the split that
demonstrations are drawn from):

- ``vqav2``: the official questions and annotations JSON files:
  ``v2_OpenEnded_mscoco_val2014_questions.json`` (``questions``: ``question_id``,
  ``image_id``, ``question``; top-level ``data_subtype`` ``val2014``) and
  ``v2_mscoco_val2014_annotations.json`` (``annotations``: ``question_id``,
  ``multiple_choice_answer``, ``answers`` = 10 x {``answer``, ``answer_confidence``,
  ``answer_id``}, ``answer_type``, ``question_type``), with COCO ``val2014/`` images named
  ``COCO_val2014_000000262148.jpg`` (``image_pattern``); demonstrations from the
  ``train2014`` files and images.
- ``okvqa``: the same layout (``OpenEnded_mscoco_val2014_questions.json``,
  ``mscoco_val2014_annotations.json``; train2014 for demonstrations), COCO images.
- ``textvqa``: ``TextVQA_0.5.1_val.json`` = ``{"data": [{"question", "question_id",
  "image_id", "answers": [10 strings], ...}]}`` with images ``train_images/IMAGE_ID.jpg``
  (val images ship in ``train_val_images.zip``); demonstrations ``TextVQA_0.5.1_train.json``.
- ``vizwiz``: ``val.json`` = a list of ``{"image": "VizWiz_val_00000000.jpg", "question",
  "answers": [10 x {"answer", "answer_confidence"}], "answer_type", "answerable"}`` with
  images in ``val/``; demonstrations ``train.json`` and ``train/``.

The references are the 10 answers, reordered so that the most common one (VQAv2/OK-VQA:
``multiple_choice_answer``) comes first: a demonstration shows it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from mmpretrain.errors import DataFormatError
from mmpretrain.registry import TASKS

from ..types import EvalExample, TaskSpec
from . import TaskConfig
from .common import check_nonempty, field, lazy_media, read_json, spec

VQA_TEMPLATE = "<image>Question: {question} Short answer: {answer}"
VQA_MAX_NEW_TOKENS = 5


def _ordered(answers: list[str], first: str | None = None) -> list[str]:
    """``answers`` with ``first`` (default: the most common answer) moved to the front."""
    if not answers:
        return answers
    top = first if first in answers else Counter(answers).most_common(1)[0][0]
    i = answers.index(top)
    return [answers[i], *answers[:i], *answers[i + 1 :]]


class _CocoVQAConfig(TaskConfig):
    image_pattern: str = "COCO_{subtype}_{image_id:012d}.jpg"
    """Image file name; {subtype} is the questions file's data_subtype (val2014), {image_id} the id."""


class VQAv2Config(_CocoVQAConfig):
    """VQAv2 val (official questions/annotations JSON + COCO val2014 images); VQA accuracy."""

    name: Literal["vqav2"] = "vqav2"
    questions: Path = Path("datasets/vqav2/v2_OpenEnded_mscoco_val2014_questions.json")
    """Questions JSON of the evaluated split."""
    annotations: Path = Path("datasets/vqav2/v2_mscoco_val2014_annotations.json")
    """Annotations JSON of the evaluated split."""
    images: Path = Path("datasets/coco/val2014")
    """Folder of the evaluated split's images."""
    demo_questions: Path = Path("datasets/vqav2/v2_OpenEnded_mscoco_train2014_questions.json")
    """Questions JSON of the demonstration split."""
    demo_annotations: Path = Path("datasets/vqav2/v2_mscoco_train2014_annotations.json")
    """Annotations JSON of the demonstration split."""
    demo_images: Path = Path("datasets/coco/train2014")
    """Folder of the demonstration split's images."""


class OKVQAConfig(_CocoVQAConfig):
    """OK-VQA val (questions/annotations JSON in the VQA layout + COCO val2014); VQA accuracy."""

    name: Literal["okvqa"] = "okvqa"
    questions: Path = Path("datasets/okvqa/OpenEnded_mscoco_val2014_questions.json")
    """Questions JSON of the evaluated split."""
    annotations: Path = Path("datasets/okvqa/mscoco_val2014_annotations.json")
    """Annotations JSON of the evaluated split."""
    images: Path = Path("datasets/coco/val2014")
    """Folder of the evaluated split's images."""
    demo_questions: Path = Path("datasets/okvqa/OpenEnded_mscoco_train2014_questions.json")
    """Questions JSON of the demonstration split."""
    demo_annotations: Path = Path("datasets/okvqa/mscoco_train2014_annotations.json")
    """Annotations JSON of the demonstration split."""
    demo_images: Path = Path("datasets/coco/train2014")
    """Folder of the demonstration split's images."""


class TextVQAConfig(TaskConfig):
    """TextVQA val (TextVQA_0.5.1_val.json + train_images/); VQA accuracy."""

    name: Literal["textvqa"] = "textvqa"
    annotations: Path = Path("datasets/textvqa/TextVQA_0.5.1_val.json")
    """The split's JSON: {"data": [{question, question_id, image_id, answers}]}."""
    images: Path = Path("datasets/textvqa/train_images")
    """Folder of IMAGE_ID.jpg (train and val images both live in train_images/)."""
    demo_annotations: Path = Path("datasets/textvqa/TextVQA_0.5.1_train.json")
    """The demonstration split's JSON."""
    demo_images: Path = Path("datasets/textvqa/train_images")
    """Folder of the demonstration split's images."""


class VizWizConfig(TaskConfig):
    """VizWiz VQA val (val.json + val/ images); VQA accuracy."""

    name: Literal["vizwiz"] = "vizwiz"
    annotations: Path = Path("datasets/vizwiz/val.json")
    """The split's JSON: a list of {image, question, answers: [{answer, answer_confidence}]}."""
    images: Path = Path("datasets/vizwiz/val")
    """Folder of the split's images (VizWiz_val_00000000.jpg, ...)."""
    demo_annotations: Path = Path("datasets/vizwiz/train.json")
    """The demonstration split's JSON."""
    demo_images: Path = Path("datasets/vizwiz/train")
    """Folder of the demonstration split's images."""


def load_vqa_official(
    task: str,
    questions_path: Path,
    annotations_path: Path,
    images: Path,
    image_pattern: str,
    keys: tuple[str, str],
) -> list[EvalExample]:
    """Questions joined with their annotations (VQAv2 / OK-VQA layout), in questions-file order."""
    questions = read_json(questions_path, task, keys[0])
    annotations = read_json(annotations_path, task, keys[1])
    if not isinstance(questions, dict) or not isinstance(questions.get("questions"), list):
        raise DataFormatError(
            f"task {task}: {questions_path} has no 'questions' list (not a VQA questions file)"
        )
    if not isinstance(annotations, dict) or not isinstance(annotations.get("annotations"), list):
        raise DataFormatError(
            f"task {task}: {annotations_path} has no 'annotations' list (not a VQA annotations file)"
        )
    subtype = questions.get("data_subtype") or annotations.get("data_subtype") or images.name
    by_id = {a.get("question_id"): a for a in annotations["annotations"]}
    out = []
    for i, q in enumerate(questions["questions"]):
        where = f"{questions_path}: questions[{i}]"
        qid = field(q, "question_id", where)
        ann = by_id.get(qid)
        if ann is None:
            raise DataFormatError(f"task {task}: question {qid} has no entry in {annotations_path}")
        answers = [a["answer"] for a in field(ann, "answers", f"{annotations_path}: question {qid}")]
        image_id = field(q, "image_id", where)
        path = images / image_pattern.format(subtype=subtype, image_id=int(image_id))
        meta = {k: ann[k] for k in ("answer_type", "question_type") if k in ann}
        out.append(
            EvalExample(
                str(qid),
                load_segments=lazy_media(("image", path)),
                question=field(q, "question", where),
                answers=_ordered(answers, ann.get("multiple_choice_answer")),
                meta={"image_id": image_id, "file": str(path), **meta},
            )
        )
    return check_nonempty(out, task, "questions", questions_path)


def load_textvqa(task: str, path: Path, images: Path, key: str) -> list[EvalExample]:
    """TextVQA's single-file layout: {"data": [{question, question_id, image_id, answers}]}."""
    data = read_json(path, task, key)
    rows = data.get("data") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise DataFormatError(f"task {task}: {path} has no 'data' list (not a TextVQA file)")
    out = []
    for i, row in enumerate(rows):
        where = f"{path}: data[{i}]"
        image_id = field(row, "image_id", where)
        image = images / f"{image_id}.jpg"
        out.append(
            EvalExample(
                str(row.get("question_id", i)),
                load_segments=lazy_media(("image", image)),
                question=field(row, "question", where),
                answers=_ordered([str(a) for a in field(row, "answers", where)]),
                meta={"image_id": image_id, "file": str(image)},
            )
        )
    return check_nonempty(out, task, "questions", path)


def load_vizwiz(task: str, path: Path, images: Path, key: str) -> list[EvalExample]:
    """VizWiz's layout: a list of {image, question, answers: [{answer, answer_confidence}]}."""
    rows = read_json(path, task, key)
    if not isinstance(rows, list):
        raise DataFormatError(f"task {task}: {path} must hold a JSON list (the VizWiz annotation layout)")
    out = []
    for i, row in enumerate(rows):
        where = f"{path}: [{i}]"
        name = field(row, "image", where)
        answers = [a["answer"] for a in field(row, "answers", where)]
        meta: dict[str, Any] = {k: row[k] for k in ("answer_type", "answerable") if k in row}
        out.append(
            EvalExample(
                Path(name).stem,
                load_segments=lazy_media(("image", images / name)),
                question=field(row, "question", where),
                answers=_ordered(answers),
                meta={"file": str(images / name), **meta},
            )
        )
    return check_nonempty(out, task, "questions", path)


def _vqa_spec(
    cfg: TaskConfig, queries: Callable[[], list[EvalExample]], demos: Callable[[], list[EvalExample]]
) -> TaskSpec:
    files = {k: str(v) for k, v in cfg.model_dump().items() if isinstance(v, Path)}
    return spec(
        cfg.name,
        kind="generate",
        metric="vqa_accuracy",
        template=VQA_TEMPLATE,
        cfg=cfg,
        queries=queries,
        demos=demos,
        max_new_tokens=VQA_MAX_NEW_TOKENS,
        description=(type(cfg).__doc__ or "").strip().splitlines()[0],
        files=files,
    )


def _build_coco_vqa(cfg: VQAv2Config | OKVQAConfig) -> TaskSpec:
    def queries() -> list[EvalExample]:
        return load_vqa_official(
            cfg.name,
            cfg.questions,
            cfg.annotations,
            cfg.images,
            cfg.image_pattern,
            ("questions", "annotations"),
        )

    def demos() -> list[EvalExample]:
        return load_vqa_official(
            cfg.name,
            cfg.demo_questions,
            cfg.demo_annotations,
            cfg.demo_images,
            cfg.image_pattern,
            ("demo_questions", "demo_annotations"),
        )

    return _vqa_spec(cfg, queries, demos)


@TASKS.register("vqav2", config=VQAv2Config)
def build_vqav2(cfg: VQAv2Config) -> TaskSpec:
    """VQAv2 open-ended VQA."""
    return _build_coco_vqa(cfg)


@TASKS.register("okvqa", config=OKVQAConfig)
def build_okvqa(cfg: OKVQAConfig) -> TaskSpec:
    """OK-VQA open-ended VQA."""
    return _build_coco_vqa(cfg)


@TASKS.register("textvqa", config=TextVQAConfig)
def build_textvqa(cfg: TextVQAConfig) -> TaskSpec:
    """TextVQA open-ended VQA."""
    return _vqa_spec(
        cfg,
        lambda: load_textvqa(cfg.name, cfg.annotations, cfg.images, "annotations"),
        lambda: load_textvqa(cfg.name, cfg.demo_annotations, cfg.demo_images, "demo_annotations"),
    )


@TASKS.register("vizwiz", config=VizWizConfig)
def build_vizwiz(cfg: VizWizConfig) -> TaskSpec:
    """VizWiz open-ended VQA."""
    return _vqa_spec(
        cfg,
        lambda: load_vizwiz(cfg.name, cfg.annotations, cfg.images, "annotations"),
        lambda: load_vizwiz(cfg.name, cfg.demo_annotations, cfg.demo_images, "demo_annotations"),
    )
