"""The evaluation engine: training-path inputs, prefix KV cache == naive path, media
cache, classification and generation over tasks, the training hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmpretrain.config import load_config
from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.data.layout import MediaDocument, MediaItem, MediaTokenIds, layout_batch
from mmpretrain.data.tokenizer import TextTokenizer, train_bpe
from mmpretrain.eval.engine import Evaluator, TokenRun
from mmpretrain.eval.evaluate import evaluate_task
from mmpretrain.eval.hook import evaluate_during_training
from mmpretrain.eval.model_io import eval_model_config
from mmpretrain.eval.types import EvalExample, PromptTemplate, TaskSpec
from mmpretrain.model.build import build_model, media_processors
from mmpretrain.model.multimodal import MultimodalLM

TEXT = "Question: how many red circles are there? Short answer: 3. Output: two blue squares and a star."


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return train_bpe([TEXT] * 20, vocab_size=300)


def tiny(config: str) -> tuple[MultimodalLM, dict, object]:
    torch.manual_seed(0)
    cfg = load_config(config).model
    model = build_model(eval_model_config(cfg)).eval()
    return model, media_processors(cfg), cfg


@pytest.fixture(scope="module")
def vlm() -> tuple[MultimodalLM, dict, object]:
    return tiny("models/vlm_tiny")


def picture(seed: int) -> DecodedSegment:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    return DecodedSegment("image", image=Image.fromarray(pixels))


def sound(seed: int, seconds: float) -> DecodedSegment:
    wave = np.random.default_rng(seed).standard_normal(int(16000 * seconds)).astype(np.float32) * 0.1
    return DecodedSegment("audio", audio=wave, sample_rate=16000)


def prompt_rows(
    ev: Evaluator, queries: int = 5
) -> tuple[TokenRun, list[tuple[TokenRun, TokenRun]], list[TokenRun]]:
    prefix = ev.encode(
        [
            picture(1),
            "Question: how many? Short answer: 3\n",
            picture(2),
            "Question: how many? Short answer: 2\n",
        ]
    )
    contexts = [
        ev.encode([picture(10 + q), "Question: how many red" + " circles" * q + "?"]) for q in range(queries)
    ]
    rows = [(c, ev.text(a)) for c in contexts for a in (" 1", " 2", " three blue")]
    return prefix, rows, contexts


def test_prompt_inputs_follow_the_training_path(vlm, tokenizer) -> None:
    """Engine embeddings + a plain causal forward == MultimodalLM.forward on the packed
    batch the training data path lays out for the same document."""
    model, processors, _ = vlm
    ev = Evaluator(model, tokenizer, processors)
    parts = [picture(1), "Question: how many? Short answer: 3\n", picture(2), "Question: how many?"]
    run = ev.encode(parts)
    embeds, mask = ev._embed([run], left_pad=False)
    logits = model.llm(inputs_embeds=embeds, attention_mask=mask).logits
    doc_parts: list = []
    for part in parts:
        if isinstance(part, str):
            doc_parts.append(tokenizer.encode(part))
        else:
            inputs = processors["image"].preprocess(part)
            doc_parts.append(MediaItem("image", processors["image"].num_tokens(inputs), inputs))
    batch = layout_batch(
        [[MediaDocument("d", doc_parts)]], len(run), tokenizer.pad_id, MediaTokenIds.from_tokenizer(tokenizer)
    )
    assert batch.input_ids[0].tolist() == list(run.ids)
    assert torch.allclose(logits, model(batch), atol=1e-5)


def test_prefix_cache_loglikelihoods_equal_the_naive_path(vlm, tokenizer) -> None:
    model, processors, _ = vlm
    out, tokens = {}, {}
    for cached in (False, True):
        ev = Evaluator(model, tokenizer, processors, batch_size=4, prefix_cache=cached)
        prefix, rows, _ = prompt_rows(ev)
        out[cached] = ev.loglikelihoods(prefix, rows)
        tokens[cached] = ev.counter.tokens
        assert ev.media.stats.prefix_runs == (1 if cached else 0)
    for naive, cached_values in zip(out[False], out[True], strict=True):
        assert naive.dtype == torch.float32 and naive.shape == cached_values.shape
        torch.testing.assert_close(cached_values, naive, atol=1e-4, rtol=0)
    # forward tokens: c(P + q + a) -> P + c(q + a)
    P = len(prefix)
    assert tokens[False] == sum(P + len(c) + len(a) for c, a in rows)
    assert tokens[True] == P + sum(len(c) + len(a) for c, a in rows)


def test_prefix_cache_generation_equals_the_naive_path(vlm, tokenizer) -> None:
    model, processors, _ = vlm
    texts = {}
    for cached, batch in ((False, 1), (False, 3), (True, 3)):
        ev = Evaluator(model, tokenizer, processors, batch_size=batch, prefix_cache=cached)
        prefix, _, contexts = prompt_rows(ev)
        ids = ev._generate_ids(prefix, contexts, 6, stop=())
        texts[(cached, batch)] = (ids, ev.generate(prefix, contexts, 6))
    assert texts[(False, 1)] == texts[(False, 3)] == texts[(True, 3)]  # padding and caching change nothing
    assert all(len(row) == 6 for row in texts[(True, 3)][0])


def test_media_features_are_cached_by_content(vlm, tokenizer) -> None:
    model, processors, _ = vlm
    ev = Evaluator(model, tokenizer, processors)
    first = ev.encode([picture(7), "a", picture(8)])
    again = ev.encode([picture(7), "b"])  # a new object holding the same pixels
    assert ev.media.stats.media_encoded == 2 and ev.media.stats.media_hits == 1
    assert first.media[0][1] == again.media[0][1]
    ev.media.max_entries = 2  # least recently used features are dropped; the newest call's never
    ev.encode([picture(9)])
    assert list(ev.media.entries) == [first.media[0][1], ev.encode([picture(9)]).media[0][1]]
    assert len(ev.encode([picture(1), picture(2), picture(3)]).media) == 3 and len(ev.media.entries) == 3


def test_audio_prompts_cache_equals_naive(tokenizer) -> None:
    model, processors, _ = tiny("models/speech_tiny")
    results = []
    for cached in (False, True):
        ev = Evaluator(model, tokenizer, processors, batch_size=2, prefix_cache=cached)
        prefix = ev.encode([sound(1, 1.0), "Transcript: two red circles\n"])
        contexts = [ev.encode([sound(2 + q, 0.5 + 0.3 * q), "Transcript:"]) for q in range(3)]
        rows = [(c, ev.text(" two red")) for c in contexts]
        results.append((ev.loglikelihoods(prefix, rows), ev.generate(prefix, contexts, 4)))
    for a, b in zip(results[0][0], results[1][0], strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert results[0][1] == results[1][1]


def toy_task(kind: str, n: int = 6) -> TaskSpec:
    def examples(offset: int, count: int) -> list[EvalExample]:
        return [
            EvalExample(
                f"e{offset + i}",
                [picture(offset + i)],
                question="how many?",
                answers=[str(i % 3)],
                choices=["0", "1", "2"] if kind == "classify" else None,
                label=str(i % 3) if kind == "classify" else None,
            )
            for i in range(count)
        ]

    return TaskSpec(
        name=f"toy_{kind}",
        kind=kind,  # type: ignore[arg-type]
        metric="accuracy" if kind == "classify" else "vqa_accuracy",
        template=PromptTemplate("<image>Question: {question} Short answer: {answer}"),
        load_queries=lambda: examples(100, n),
        load_demos=lambda: examples(0, 12),
        max_new_tokens=3,
    )


@pytest.mark.parametrize("kind", ["classify", "generate"])
def test_evaluate_task_shares_one_prefix_across_queries(vlm, tokenizer, kind: str) -> None:
    model, processors, _ = vlm
    ev = Evaluator(model, tokenizer, processors, batch_size=4)
    seen = []
    result = evaluate_task(ev, toy_task(kind), 2, limit=5, seed=0, progress=seen.append)
    assert (result.n, result.shots, result.demos, sum(seen)) == (5, 2, "random", 5)
    assert result.prefix_runs == 1  # one shared set of demonstrations: the prefix ran once
    assert 0.0 <= result.score <= 1.0
    first = result.predictions[0]
    assert len(first["demos"]) == 2 and not set(first["demos"]) & {p["id"] for p in result.predictions}
    if kind == "classify":
        assert set(first["choice_scores"]) == {"0", "1", "2"}
        assert first["prediction"] == max(first["choice_scores"], key=first["choice_scores"].get)


def test_evaluate_task_with_rices_demonstrations(vlm, tokenizer) -> None:
    model, processors, _ = vlm
    ev = Evaluator(model, tokenizer, processors, batch_size=4)
    result = evaluate_task(ev, toy_task("classify"), 3, limit=3, demos="rices")
    assert result.demos == "rices" and result.n == 3
    assert all(len(p["demos"]) == 3 for p in result.predictions)


def test_training_hook_restores_the_model(tokenizer) -> None:
    torch.manual_seed(0)
    cfg = load_config("models/vlm_tiny")
    model = build_model(cfg.model)  # mmpt_chunked attention, as in training
    model.train()
    state = torch.get_rng_state()
    full = []
    scores = evaluate_during_training(
        model, tokenizer, cfg, [toy_task("classify")], shots=(0, 2), limit=3, results=full
    )
    assert set(scores) == {"eval/toy_classify/0shot", "eval/toy_classify/2shot"}
    assert [r.shots for r in full] == [0, 2]
    assert model.training and model.llm.config._attn_implementation == "mmpt_chunked"
    assert torch.equal(torch.get_rng_state(), state)


def test_generation_ends_at_eos_stop_strings_and_media_tokens(vlm, tokenizer) -> None:
    model, processors, _ = vlm
    ev = Evaluator(model, tokenizer, processors)
    words = tokenizer.encode(" 3 red")
    assert ev._finish([*words, tokenizer.image_start_id, *words], stop=()) == "3 red"
    assert ev._finish([*words, tokenizer.eos_id, *words], stop=()) == "3 red"
    assert ev._finish(tokenizer.encode(" 3\nQuestion"), stop=("\n",)) == "3"
