"""k-shot prompt construction: demonstrations, no query leakage, seeding, RICES order."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from PIL import Image

from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.errors import UserError
from mmpretrain.eval.prompt import RandomDemos, RicesDemos, build_prompt, demo_answer
from mmpretrain.eval.types import EvalExample, PromptTemplate, TaskSpec


def image(rgb: tuple[int, int, int]) -> DecodedSegment:
    return DecodedSegment("image", image=Image.new("RGB", (8, 8), rgb))


def example(i: int, rgb: tuple[int, int, int] | None = None) -> EvalExample:
    return EvalExample(
        f"ex{i}",
        [image(rgb or (i, 2 * i % 256, 3 * i % 256))],
        question=f"how many {i}?",
        answers=[str(i % 5), "x"],
    )


def vqa_task(pool: list[EvalExample], queries: list[EvalExample], kind: str = "generate") -> TaskSpec:
    return TaskSpec(
        name="toy",
        kind=kind,  # type: ignore[arg-type]
        metric="vqa_accuracy",
        template=PromptTemplate("<image>Question: {question} Short answer: {answer}"),
        load_queries=lambda: queries,
        load_demos=lambda: pool,
    )


def test_prompt_has_k_demonstrations_then_the_query_without_its_answer() -> None:
    pool = [example(i) for i in range(10)]
    query = example(100)
    task = vqa_task(pool, [query])
    demos = RandomDemos(pool, seed=0).select(query, 3)
    prompt = build_prompt(task, demos, query)
    assert len(prompt.demos) == 3
    images = [p for p in prompt.prefix if isinstance(p, DecodedSegment)]
    assert [img.image.tobytes() for img in images] == [d.segments[0].image.tobytes() for d in demos]  # type: ignore[union-attr]
    texts = [p for p in prompt.prefix if isinstance(p, str)]
    assert texts == [f"Question: {d.question} Short answer: {d.answers[0]}\n" for d in demos]
    assert prompt.query[0] is query.segments[0]
    assert prompt.query[1:] == ["Question: how many 100? Short answer:"]
    assert task.template.continuation("3") == " 3"


def test_zero_shots_is_the_query_alone() -> None:
    pool = [example(i) for i in range(4)]
    query = example(9)
    prompt = build_prompt(vqa_task(pool, [query]), RandomDemos(pool, 0).select(query, 0), query)
    assert prompt.prefix == [] and prompt.demos == ()


def test_random_demos_are_seeded_shared_and_nested() -> None:
    pool = [example(i) for i in range(20)]
    queries = [example(100 + i) for i in range(5)]
    a, b, c = RandomDemos(pool, seed=1), RandomDemos(pool, seed=1), RandomDemos(pool, seed=2)
    picks = [[d.id for d in a.select(q, 4)] for q in queries]
    assert picks == [[d.id for d in b.select(q, 4)] for q in queries]  # seeded
    assert all(p == picks[0] for p in picks)  # shared by queries: one prefix to cache
    assert [d.id for d in c.select(queries[0], 4)] != picks[0]
    assert [d.id for d in a.select(queries[0], 8)][:4] == picks[0]  # 4-shot demos are the first 4 of 8


def test_random_demos_never_include_the_query() -> None:
    pool = [example(i) for i in range(12)]
    sampler = RandomDemos(pool, seed=3)
    for query in pool:  # queries drawn from the demo split itself
        chosen = sampler.select(query, 11)
        assert query.id not in {d.id for d in chosen} and len(chosen) == 11
    # same picture under another id (a second question about one image) is a leak too
    twin = EvalExample("other-id", [image((5, 10, 15))], question="q", answers=["a"])
    for k in (1, 5, 11):
        assert all(d.id != "ex5" for d in sampler.select(twin, k))
    with pytest.raises(UserError, match="not enough"):
        sampler.select(pool[0], 12)


def colour_embed(examples: Sequence[EvalExample]) -> list[torch.Tensor | None]:
    out: list[torch.Tensor | None] = []
    for e in examples:
        images = [s.image for s in e.media if s.image is not None]
        if not images:
            out.append(None)
            continue
        vector = torch.tensor(images[0].getpixel((0, 0)), dtype=torch.float32) + 1.0
        out.append(torch.nn.functional.normalize(vector, dim=0))
    return out


def test_rices_takes_the_most_similar_and_puts_the_most_similar_last() -> None:
    colours = [(250, 0, 0), (200, 50, 0), (120, 120, 0), (0, 250, 0), (0, 0, 250), (10, 10, 240)]
    pool = [example(i, rgb) for i, rgb in enumerate(colours)]
    query = example(99, (255, 5, 0))  # nearly pure red
    chosen = RicesDemos(pool, colour_embed).select(query, 3)
    assert [d.id for d in chosen] == ["ex2", "ex1", "ex0"]  # ascending similarity: the closest is last
    similarity = [float(colour_embed([d])[0] @ colour_embed([query])[0]) for d in chosen]  # type: ignore[operator]
    assert similarity == sorted(similarity)


def test_rices_excludes_the_query_even_when_it_is_in_the_pool() -> None:
    pool = [example(i, (250 - 20 * i, 20 * i, 0)) for i in range(6)]
    chosen = RicesDemos(pool, colour_embed).select(pool[2], 3)
    assert "ex2" not in [d.id for d in chosen] and len(chosen) == 3
    assert chosen[-1].id in ("ex1", "ex3")


def test_rices_without_images_is_refused() -> None:
    pool = [EvalExample(f"t{i}", [DecodedSegment("text", text="hi")], answers=["a"]) for i in range(3)]
    with pytest.raises(UserError, match="RICES needs images"):
        RicesDemos(pool, colour_embed)


def test_classification_demonstrations_show_their_label() -> None:
    task = TaskSpec(
        name="cls",
        kind="classify",
        metric="accuracy",
        template=PromptTemplate("<image>Is it hateful? {answer}"),
        load_queries=lambda: [],
        load_demos=lambda: [],
    )
    demo = EvalExample("d", [image((1, 2, 3))], answers=["no"], choices=["no", "yes"], label="yes")
    assert demo_answer(task, demo) == "yes"
    prompt = build_prompt(task, [demo], example(7))
    assert prompt.prefix[1:] == ["Is it hateful? yes\n"]
    assert prompt.query[1:] == ["Is it hateful?"]
