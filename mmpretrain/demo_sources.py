"""The data of `mmpt demo`: the demo shards, Shakespeare as text shards, and three sources
derived from the demo's *training* shards for the recipe's stages and mix.

- ``align``: the ``caption`` and ``speech_caption`` samples as they are (picture or speech,
  then its caption): what connector alignment trains on.
- ``qa``: questions about the training pictures, asked from each picture's scene
  (``meta["shapes"]``) exactly as the built-in tasks ask them of held-out pictures: a
  colour or shape question per picture (:func:`~mmpretrain.eval.tasks.demo.classify_examples`)
  and a counting question per picture that has none (``vqa`` samples already do). The
  demo data's own questions are only about counting; without these the tiny model sees
  no colour or shape question before it is asked one. Held-out pictures are never used.
- ``grid``: a dense description of each training picture, one word per place of its 3x3
  grid in reading order ("Kinds: circle no star ... Colours: red no blue ..."), "no" for an
  empty place. With the recipe's vision geometry (72 px, 8 px patches, pixel shuffle 3)
  each image token covers exactly one place, so the i-th word of each list lines up with
  the i-th image token at a fixed distance: per-place supervision of what the tokens hold
  (grounded descriptions, as region captions are for larger models). Without it a tower
  trained from scratch learns colour (readable from all tokens at once) but not shape.
- ``demo_text``: the text of every training document without its media (the language of
  the captions and questions, for the LLM's text-only stage).

All four are ordinary shard directories (``index.json`` with sample counts), written
with :class:`~mmpretrain.data.shard_io.ShardWriter`, in the order of the input shards, so
they are reproducible from the demo build.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mmpretrain.data.demo_scenes import GRID, POSITIONS
from mmpretrain.data.shard_io import ShardWriter, iter_shard_samples
from mmpretrain.data.skips import SkipCounter
from mmpretrain.data.types import Sample, Segment

ALIGN_KINDS = ("caption", "speech_caption")


def _samples(folder: Path) -> Iterator[Sample]:
    for shard in sorted(folder.glob("shard-*.tar")):
        yield from iter_shard_samples(shard, SkipCounter(max_skips=0, name=str(shard)))


def _write(out: Path, samples: Iterator[Sample], what: str) -> dict[str, Any]:
    """Write ``samples`` into ``out`` (replacing an earlier build); returns its index."""
    for old in out.glob("shard-*.tar"):
        old.unlink()
    count = 0
    with ShardWriter(out, max_samples=1000) as writer:
        for sample in samples:
            writer.write(sample)
            count += 1
    if count == 0:
        raise RuntimeError(f"demo: no samples for {what} ({out}): is the demo build empty?")
    index = {
        "format_version": 1,
        "source": what,
        "samples": count,
        "shards": [
            {"path": p.name, "samples": n}
            for p, n in zip(writer.shards, writer.samples_per_shard, strict=True)
        ],
    }
    (out / "index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return index


def _picture_document(key: str, image: Segment, text: str, meta: dict[str, Any]) -> Sample:
    """A derived two-segment document: ``image`` (bytes and meta kept), then ``text``;
    its source is ``demo_`` + ``meta["kind"]``."""
    return Sample(
        key=key,
        source=f"demo_{meta['kind']}",
        segments=[
            Segment("image", data=image.data, meta=dict(image.meta), member="0.png"),
            Segment("text", text=text),
        ],
        meta=meta,
    )


def alignment_samples(demo: Path) -> Iterator[Sample]:
    """The picture-caption and speech-caption samples of the demo training shards."""
    for sample in _samples(demo):
        if sample.meta.get("kind") in ALIGN_KINDS:
            yield sample


def question_samples(demo: Path) -> Iterator[Sample]:
    """One image + ``Question: ... Answer: ...`` document per question about a training picture."""
    from mmpretrain.eval.tasks.demo import classify_examples, count_examples

    number = 0
    for sample in _samples(demo):
        segments = {f"{sample.key}#{i}": seg for i, seg in enumerate(sample.segments)}
        examples = list(classify_examples(sample))
        if sample.meta.get("kind") != "vqa":  # vqa samples hold their counting question already
            examples += list(count_examples(sample))
        for example in examples:
            text = f"Question: {example.question} Answer: {example.answers[0]}"
            yield _picture_document(
                f"qa/{number:06d}", segments[example.id], text, {"kind": "qa", "from": example.id}
            )
            number += 1


GRID_ORDER: tuple[str, ...] = tuple(POSITIONS[(row, col)] for row in range(GRID) for col in range(GRID))
"""The places of the 3x3 grid in reading order (the order of the image tokens)."""
EMPTY_PLACE = "no"
"""The word of an empty place (one token in the demo's tokenizer, as every kind and colour is)."""


def grid_text(shapes: list[dict[str, str]]) -> str:
    """One word per place, in reading order: "Kinds: no circle ... Colours: no red ...".

    The order matters less than the length of the run: at 1,500 steps kinds-first read the
    colours worse (colour questions 0.18, colours-first 0.76), at 2,500 steps kinds-first
    was better on both (colour/shape questions 0.74 vs 0.57, counting 0.37 vs 0.35).

    ``shapes``: an image segment's ``meta["shapes"]`` (kind, colour, size, position word).
    """
    at = {shape["position"]: shape for shape in shapes}
    kinds = " ".join(at[place]["kind"] if place in at else EMPTY_PLACE for place in GRID_ORDER)
    colours = " ".join(at[place]["colour"] if place in at else EMPTY_PLACE for place in GRID_ORDER)
    return f"Kinds: {kinds}. Colours: {colours}."


def grid_samples(demo: Path) -> Iterator[Sample]:
    """One image + :func:`grid_text` document per training picture."""
    from mmpretrain.eval.tasks.demo import scene_pictures

    number = 0
    for sample in _samples(demo):
        for _, image, shapes in scene_pictures(sample):
            meta = {"kind": "grid", "from": sample.key}
            yield _picture_document(f"grid/{number:06d}", image, grid_text(shapes), meta)
            number += 1


def text_samples(demo: Path) -> Iterator[Sample]:
    """The text of each training document (captions, questions, sentences), media left out."""
    for sample in _samples(demo):
        text = " ".join(seg.text.strip() for seg in sample.segments if seg.kind == "text" and seg.text)
        if text.strip():
            yield Sample(
                key=sample.key,
                source="demo_text",
                segments=[Segment("text", text=text)],
                meta={"kind": "text"},
            )


DERIVED: dict[str, tuple[Callable[[Path], Iterator[Sample]], str]] = {
    "align": (alignment_samples, "caption and speech-caption samples of the demo shards"),
    "qa": (question_samples, "colour/shape/counting questions about the demo's training pictures"),
    "grid": (grid_samples, "one word per place of each training picture's 3x3 grid (kinds, colours)"),
    "demo_text": (text_samples, "the text of the demo documents, media left out"),
}


def build_derived(demo: Path, out: Path, log: Callable[[str], None] = print) -> dict[str, int]:
    """Write every derived source into ``out/NAME``; returns sample counts by name."""
    counts = {}
    for name, (make, what) in DERIVED.items():
        counts[name] = _write(out / name, make(demo), what)["samples"]
        log(f"  {name:<10} {counts[name]:>6,} samples: {what}")
    return counts


def build_text_shards(out: Path, heldout_every: int = 20) -> int:
    """The Shakespeare training documents (every ``heldout_every``-th one held out, as the
    ``shakespeare`` text source does) as text-only shards; returns the document count."""
    from mmpretrain.data.text_sources import ShakespeareSource, iter_documents

    def samples() -> Iterator[Sample]:
        source = ShakespeareSource(split="train", heldout_every=heldout_every)
        for i, document in enumerate(iter_documents(source)):
            yield Sample(
                key=f"shakespeare/{i:06d}",
                source="shakespeare",
                segments=[Segment("text", text=document.text)],
            )

    return int(_write(out, samples(), "Shakespeare (training documents)")["samples"])
