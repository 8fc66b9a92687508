"""Built-in tasks on the demo data, so that ``mmpt eval`` works out of the box.

They read the held-out split that ``mmpt data build --format demo --out runs/demo-data``
writes (``runs/demo-data/heldout/shard-*.tar``; key ``heldout``) for queries, and the
training shards beside it (``runs/demo-data/shard-*.tar``; key ``train``) for
demonstrations, in shard order (deterministic; at most ``max_demos``). Held-out scenes never
occur in the training shards. Every image segment there carries its scene in
``meta["shapes"]`` (kind, colour, size, position of each shape), so questions are built
from the scene, and answered truthfully:

- ``shapes_classify``: one question per held-out image, about colour ("What colour is the
  star?" / "What colour are the circles?", asked of a kind whose shapes share one colour;
  choices: the 8 colours) or shape ("What shape is red?", asked of a colour whose shapes
  share one kind; choices: the 4 kinds), alternating by a hash of the image's key. Ranked
  by log-likelihood; accuracy.
- ``shapes_count``: counting VQA, one question per held-out image: the sample's own
  question and answer for ``vqa`` samples, otherwise one drawn as the demo data draws them
  (:func:`~mmpretrain.data.demo_scenes.counting_qa`, seeded by the image's key). Answers
  are digits as the demo data writes them ("0" .. "6", also the choices for
  ``kind: classify``); the one true answer stands for all 10 annotators, so VQA accuracy is
  1 or 0 (exact match after stripping whitespace).
- ``shapes_caption``: the ``caption`` samples' image -> caption; CIDEr-D against the one
  true caption. Template ``<image>{answer}`` with no separator between demonstrations: the
  layout of the demo data's own interleaved image/caption documents.
- ``shapes_asr``: the audio of ``speech_caption`` and ``spoken_sentence`` samples -> its
  transcript; WER. Template ``<audio>{answer}`` (audio followed by its text, as trained).

The held-out split is a tenth of the build (``--samples 600`` gives 60 documents; build
with more samples for tighter numbers).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from mmpretrain.data.decoders import DecodedSegment, decode_audio, decode_image
from mmpretrain.data.demo_scenes import COLOURS, MAX_SHAPES, SHAPE_KINDS, Scene, Shape, counting_qa
from mmpretrain.data.shard_io import iter_shard_samples
from mmpretrain.data.skips import SkipCounter
from mmpretrain.data.types import Sample, Segment
from mmpretrain.errors import UserError
from mmpretrain.registry import TASKS

from ..types import EvalExample, TaskSpec
from . import TaskConfig
from .common import spec

DEMO_HINT = "run `mmpt data build --format demo --out runs/demo-data` first"
QA_TEMPLATE = "<image>Question: {question} Answer: {answer}"
COUNT_CHOICES = [str(n) for n in range(MAX_SHAPES + 1)]


class _DemoTaskConfig(TaskConfig):
    heldout: Path = Path("runs/demo-data/heldout")
    """Held-out split of the demo data (queries)."""
    train: Path | None = None
    """Demo training shards (demonstrations); None: the folder above heldout."""
    max_demos: int | None = 256
    """Read demonstrations from the training shards until this many are found (None: all)."""


class ShapesClassifyConfig(_DemoTaskConfig):
    """Demo data: colour / shape of the shapes, ranked among the candidates; accuracy."""

    name: Literal["shapes_classify"] = "shapes_classify"


class ShapesCountConfig(_DemoTaskConfig):
    """Demo data: counting VQA ("How many circles are there?" -> "2"); VQA accuracy."""

    name: Literal["shapes_count"] = "shapes_count"
    kind: Literal["generate", "classify"] = "generate"
    """generate: greedy answer; classify: rank the digits 0-6."""


class ShapesCaptionConfig(_DemoTaskConfig):
    """Demo data: caption the picture; CIDEr-D."""

    name: Literal["shapes_caption"] = "shapes_caption"


class ShapesAsrConfig(_DemoTaskConfig):
    """Demo data: transcribe the spoken captions and sentences; WER."""

    name: Literal["shapes_asr"] = "shapes_asr"


# ------------------------------------------------------------------------------ reading


def _shards(folder: Path, key: str) -> list[Path]:
    shards = sorted(folder.glob("shard-*.tar")) if folder.is_dir() else []
    if not shards:
        raise UserError(f"demo data not found: no shard-*.tar in {folder} (set {key}=DIR or {DEMO_HINT})")
    return shards


def _samples(folder: Path, key: str) -> Iterator[Sample]:
    for shard in _shards(folder, key):
        yield from iter_shard_samples(shard, SkipCounter(max_skips=None, name=str(shard)))


def _image(seg: Segment) -> Callable[[], list[DecodedSegment]]:
    def load() -> list[DecodedSegment]:
        assert seg.data is not None
        return [DecodedSegment("image", image=decode_image(seg.data), meta=dict(seg.meta), member=seg.member)]

    return load


def _audio(seg: Segment) -> Callable[[], list[DecodedSegment]]:
    def load() -> list[DecodedSegment]:
        assert seg.data is not None
        audio, rate = decode_audio(seg.data)
        # no transcript on the query's audio: it is the answer
        return [
            DecodedSegment("audio", audio=audio, sample_rate=rate, meta=dict(seg.meta), member=seg.member)
        ]

    return load


def _scene(shapes: list[dict[str, str]]) -> Scene:
    """The scene of an image's meta (positions are words there; counting needs none)."""
    return Scene([Shape(s["kind"], s["colour"], s["size"], 0, 0) for s in shapes])


def _stable(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


Maker = Callable[[Sample], Iterator[EvalExample]]


def _collect(folder: Path, key: str, make: Maker, limit: int | None) -> list[EvalExample]:
    out: list[EvalExample] = []
    for sample in _samples(folder, key):
        for ex in make(sample):
            out.append(ex)
            if limit is not None and len(out) >= limit:
                return out
    return out


def scene_pictures(sample: Sample) -> Iterator[tuple[str, Segment, list[dict[str, str]]]]:
    """``(id, segment, shapes)`` of each picture of ``sample`` that holds a scene
    (``meta["shapes"]``); the id is ``KEY#INDEX`` of the segment."""
    for i, seg in enumerate(sample.segments):
        if seg.kind == "image" and seg.meta.get("shapes"):
            yield f"{sample.key}#{i}", seg, seg.meta["shapes"]


# ------------------------------------------------------------------------------ examples


def classify_examples(sample: Sample) -> Iterator[EvalExample]:
    """A colour or shape question per image (see the module docstring)."""
    for ex_id, seg, shapes in scene_pictures(sample):
        colours_of: dict[str, set[str]] = {}
        kinds_of: dict[str, set[str]] = {}
        for s in shapes:
            colours_of.setdefault(s["kind"], set()).add(s["colour"])
            kinds_of.setdefault(s["colour"], set()).add(s["kind"])
        colour_qs = [k for k in colours_of if len(colours_of[k]) == 1]
        shape_qs = [c for c in kinds_of if len(kinds_of[c]) == 1]
        ask_colour = bool(colour_qs) and (not shape_qs or _stable(ex_id) % 2 == 0)
        if ask_colour:
            kind = colour_qs[0]
            n = sum(s["kind"] == kind for s in shapes)
            question = f"What colour is the {kind}?" if n == 1 else f"What colour are the {kind}s?"
            answer, choices, topic = next(iter(colours_of[kind])), list(COLOURS), "colour"
        elif shape_qs:
            colour = shape_qs[0]
            question = f"What shape is {colour}?"
            answer, choices, topic = next(iter(kinds_of[colour])), list(SHAPE_KINDS), "shape"
        else:
            continue
        yield EvalExample(
            ex_id,
            load_segments=_image(seg),
            question=question,
            answers=[answer],
            choices=choices,
            label=answer,
            meta={"topic": topic, "sample_kind": sample.meta.get("kind")},
        )


def count_examples(sample: Sample) -> Iterator[EvalExample]:
    """A counting question per image: the sample's own (vqa samples) or one drawn from its scene."""
    for ex_id, seg, shapes in scene_pictures(sample):
        if sample.meta.get("kind") == "vqa" and "question" in sample.meta:
            question, answer = sample.meta["question"], str(sample.meta["answer"])
        else:
            question, answer = counting_qa(_scene(shapes), random.Random(ex_id))
        yield EvalExample(
            ex_id,
            load_segments=_image(seg),
            question=question,
            answers=[answer] * 10,
            choices=list(COUNT_CHOICES),
            label=None,
            meta={"sample_kind": sample.meta.get("kind")},
        )


def caption_examples(sample: Sample) -> Iterator[EvalExample]:
    """The image and caption of a ``caption`` sample."""
    if sample.meta.get("kind") != "caption":
        return
    for ex_id, seg, _ in scene_pictures(sample):
        text = [s.text for s in sample.segments if s.kind == "text" and s.text]
        if text:
            yield EvalExample(ex_id, load_segments=_image(seg), answers=[text[0].strip()])


def asr_examples(sample: Sample) -> Iterator[EvalExample]:
    """The audio and transcript of ``speech_caption`` / ``spoken_sentence`` samples."""
    if sample.meta.get("kind") not in ("speech_caption", "spoken_sentence"):
        return
    for i, seg in enumerate(sample.segments):
        if seg.kind == "audio" and seg.text:
            yield EvalExample(f"{sample.key}#{i}", load_segments=_audio(seg), answers=[seg.text.strip()])


# ------------------------------------------------------------------------------ builders


def _demo_spec(
    cfg: _DemoTaskConfig,
    make: Maker,
    *,
    kind: Any,
    metric: str,
    template: str,
    max_new_tokens: int,
    separator: str = "\n",
    stop: tuple[str, ...] = ("\n",),
) -> TaskSpec:
    train = cfg.train if cfg.train is not None else cfg.heldout.parent
    train_key = "train" if cfg.train is not None else "heldout (train is its parent folder)"

    def queries() -> list[EvalExample]:
        out = _collect(cfg.heldout, "heldout", make, None)
        if not out:
            raise UserError(
                f"task {cfg.name}: the held-out split {cfg.heldout} has no examples for it; "
                "build the demo data with more --samples"
            )
        return out

    def demos() -> list[EvalExample]:
        return _collect(train, train_key, make, cfg.max_demos)

    return spec(
        cfg.name,
        kind=kind,
        metric=metric,
        template=template,
        cfg=cfg,
        queries=queries,
        demos=demos,
        max_new_tokens=max_new_tokens,
        description=(type(cfg).__doc__ or "").strip().splitlines()[0],
        files={"heldout": str(cfg.heldout), "train": str(train)},
        separator=separator,
        stop=stop,
    )


@TASKS.register("shapes_classify", config=ShapesClassifyConfig)
def build_shapes_classify(cfg: ShapesClassifyConfig) -> TaskSpec:
    """Demo colour/shape classification."""
    return _demo_spec(
        cfg, classify_examples, kind="classify", metric="accuracy", template=QA_TEMPLATE, max_new_tokens=2
    )


@TASKS.register("shapes_count", config=ShapesCountConfig)
def build_shapes_count(cfg: ShapesCountConfig) -> TaskSpec:
    """Demo counting VQA."""
    return _demo_spec(
        cfg, count_examples, kind=cfg.kind, metric="vqa_accuracy", template=QA_TEMPLATE, max_new_tokens=3
    )


@TASKS.register("shapes_caption", config=ShapesCaptionConfig)
def build_shapes_caption(cfg: ShapesCaptionConfig) -> TaskSpec:
    """Demo captioning."""
    return _demo_spec(
        cfg, caption_examples, kind="generate", metric="cider", template="<image>{answer}",
        max_new_tokens=32, separator="", stop=("\n", "."),
    )  # fmt: skip


@TASKS.register("shapes_asr", config=ShapesAsrConfig)
def build_shapes_asr(cfg: ShapesAsrConfig) -> TaskSpec:
    """Demo spoken-caption ASR."""
    return _demo_spec(
        cfg, asr_examples, kind="generate", metric="wer", template="<audio>{answer}",
        max_new_tokens=48, separator="", stop=("\n", "."),
    )  # fmt: skip
