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
- ``demo_text``: the text of every training document without its media (the language of
  the captions and questions, for the LLM's text-only stage).

All three are ordinary shard directories (``index.json`` with sample counts), written
with :class:`~mmpretrain.data.shard_io.ShardWriter`, in the order of the input shards, so
they are reproducible from the demo build.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
            image = segments[example.id]
            text = f"Question: {example.question} Answer: {example.answers[0]}"
            yield Sample(
                key=f"qa/{number:06d}",
                source="demo_qa",
                segments=[
                    Segment("image", data=image.data, meta=dict(image.meta), member="0.png"),
                    Segment("text", text=text),
                ],
                meta={"kind": "qa", "from": example.id},
            )
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
