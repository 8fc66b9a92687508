"""Metric worked examples (by hand, from the official definitions) and pycocoevalcap parity."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from mmpretrain.errors import UserError
from mmpretrain.eval.metrics import LOWER_IS_BETTER, METRICS, score
from mmpretrain.eval.metrics.asr import edit_distance, error_rate, normalize_transcript
from mmpretrain.eval.metrics.caption import bleu, cider_d, ptb_tokenize, tokenize_for_eval
from mmpretrain.eval.metrics.classification import average_ranks, roc_auc_score
from mmpretrain.eval.metrics.vqa import (
    normalize_answer,
    postprocess_vqa_generation,
    process_digit_article,
    process_punctuation,
    vqa_score,
)
from mmpretrain.eval.types import EvalExample

FORMATS = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "formats"


def example(answers: list[str], **kw: object) -> EvalExample:
    return EvalExample("x", [], answers=answers, **kw)  # type: ignore[arg-type]


def test_registry_names() -> None:
    assert set(METRICS) == {"vqa_accuracy", "cider", "bleu4", "accuracy", "roc_auc", "wer", "cer"}
    assert {"wer", "cer"} == LOWER_IS_BETTER


def test_score_checks_its_inputs() -> None:
    with pytest.raises(UserError, match="unknown metric 'f1'"):
        score("f1", ["a"], [example(["a"])])
    with pytest.raises(ValueError, match="2 predictions for 1 examples"):
        score("accuracy", ["a", "b"], [example(["a"])])


# ------------------------------------------------------------------------------ VQA


def official_vqa(prediction: str, answers: list[str]) -> float:
    """A literal transcription of the official evaluate() loop for one question."""
    gts = [
        {"answer": a.replace("\n", " ").replace("\t", " ").strip(), "answer_id": i}
        for i, a in enumerate(answers)
    ]
    res = prediction.replace("\n", " ").replace("\t", " ").strip()
    if len({g["answer"] for g in gts}) > 1:
        for g in gts:
            g["answer"] = process_digit_article(process_punctuation(str(g["answer"])))
        res = process_digit_article(process_punctuation(res))
    accs = []
    for datum in gts:
        others = [item for item in gts if item != datum]
        matching = [item for item in others if item["answer"] == res]
        accs.append(min(1, len(matching) / 3))
    return sum(accs) / len(accs)


RED = ["red"] * 6 + ["dark red", "orange", "red", "pink"]


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        ("red", RED, 1.0),  # 7 annotators: every leave-one-out subset has >= 3 matches
        ("dark red", RED, 0.3),  # 1 annotator: 9 subsets x 1/3 + the subset without it x 0
        ("Orange", RED, 0.3),  # answers disagree -> normalized (lower case)
        ("the orange.", RED, 0.3),  # article and final period removed
        ("blue", ["blue"] * 3 + [f"c{i}" for i in range(7)], 0.9),  # 3 x (2/3) + 7 x 1, over 10
        ("blue", ["blue"] * 2 + [f"c{i}" for i in range(8)], 0.6),  # 2 x (1/3) + 8 x (2/3), over 10
        ("purple", RED, 0.0),
        ("two", ["2"] * 8 + ["3", "two"], 1.0),  # disagree: "two" -> "2" on both sides
        # the quirk: unanimous answers are compared without normalization
        ("yes", ["yes"] * 10, 1.0),
        (" yes\n", ["yes"] * 10, 1.0),  # only whitespace is stripped
        ("Yes", ["yes"] * 10, 0.0),
        ("two", ["2"] * 10, 0.0),
        ("yes.", ["yes"] * 10, 0.0),
        ("Yes", ["yes"] * 9 + ["Yes"], 1.0),  # not unanimous (as strings): normalized
    ],
)
def test_vqa_worked_examples(prediction: str, answers: list[str], expected: float) -> None:
    assert vqa_score(prediction, answers) == pytest.approx(expected)
    assert official_vqa(prediction, answers) == pytest.approx(expected)


def test_vqa_matches_the_literal_official_loop() -> None:
    rng = random.Random(0)
    pool = [
        "2",
        "two",
        "Two",
        "the dog",
        "dog",
        "a dog.",
        "dogs",
        "yes",
        "Yes",
        "no",
        "3.5",
        "don't",
        "dont",
        "1,000",
    ]
    for _ in range(300):
        answers = [rng.choice(pool) for _ in range(10)]
        prediction = rng.choice(pool)
        assert vqa_score(prediction, answers) == pytest.approx(official_vqa(prediction, answers))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes, sir", "yes sir"),  # a mark touching a space is deleted
        ("hello-world", "hello world"),  # otherwise replaced by a space
        ("1,000 dogs!", "1000 dogs"),  # digit,digit anywhere: every mark is deleted
        ("3.5 apples.", "3.5 apples"),  # a period before a digit stays
        ("a.b", "ab"),
    ],
)
def test_vqa_process_punctuation(text: str, expected: str) -> None:
    assert process_punctuation(text) == expected


def test_vqa_period_strip_stops_after_32() -> None:
    # the official call passes re.UNICODE (32) as sub's count argument
    assert process_punctuation("." * 40) == "." * 8


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Two Dogs", "2 dogs"),
        ("none", "0"),
        ("an apple", "apple"),
        ("dont know", "don't know"),
        ("Im here", "im here"),  # the official map's "Im" key never matches lower-cased text
        ("ten", "10"),
    ],
)
def test_vqa_process_digit_article(text: str, expected: str) -> None:
    assert process_digit_article(text) == expected


def test_vqa_normalize_and_postprocess() -> None:
    assert normalize_answer("  The TWO cats!\n") == "2 cats"
    assert postprocess_vqa_generation(" 2\nQuestion: how many") == "2"
    assert postprocess_vqa_generation("red Question: what") == "red"
    assert postprocess_vqa_generation("blue<image>") == "blue"


def test_vqa_accuracy_on_the_vqav2_fixture() -> None:
    annotations = json.loads((FORMATS / "vqav2_annotations.json").read_text())["annotations"]
    examples = [example([a["answer"] for a in ann["answers"]]) for ann in annotations]
    # question 1: red x7, dark red, orange, pink; question 2: 2 x8, 3, two
    assert score("vqa_accuracy", ["red", "2"], examples) == pytest.approx(1.0)
    assert score("vqa_accuracy", ["pink", "3"], examples) == pytest.approx(0.3)
    assert score("vqa_accuracy", ["dark red", "two"], examples) == pytest.approx((0.3 + 1.0) / 2)


# ------------------------------------------------------------------------------ captions


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("A man's dog, (running)!", ["a", "man", "'s", "dog", "running"]),
        ("Two dogs don't play.", ["two", "dogs", "do", "n't", "play"]),
        (
            "It costs $5.50, or 1,000 yen at 10:30.",
            ["it", "costs", "$", "5.50", "or", "1,000", "yen", "at", "10:30"],
        ),
        (
            '"Hello," she said. The dogs\' toys -- well-known',
            ["hello", "she", "said", "the", "dogs", "toys", "well-known"],
        ),
        ("I'm here; you're there? 'quoted'", ["i", "'m", "here", "you", "'re", "there", "quoted"]),
        ("A U.S. flag...\nOn a pole", ["a", "u.s.", "flag", "on", "a", "pole"]),
    ],
)
def test_ptb_tokenize(text: str, tokens: list[str]) -> None:
    assert ptb_tokenize(text) == tokens


def test_cider_d_by_hand() -> None:
    # two images, so every n-gram seen in one image's references has IDF log(2 / 1)
    # exact two-word match: unigram and bigram similarity 1, no 3-/4-grams -> 10 * 2/4
    mean, per_image = cider_d(["a b", "c d"], [["a b"], ["c d"]])
    assert per_image == pytest.approx([5.0, 5.0])
    assert mean == pytest.approx(5.0)
    # image 1: hyp "a b" vs ref "a b c": unigram 2/sqrt(2*3), bigram 1/sqrt(1*2); the
    # hypothesis has 1 bigram, the reference 2 -> length penalty exp(-1 / (2 * 6^2))
    mean, per_image = cider_d(["a b", "d e"], [["a b c"], ["d e"]])
    first = 10 * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    assert per_image == pytest.approx([first, 5.0])
    # an n-gram in every image's references has IDF 0 and counts for nothing
    assert cider_d(["a", "a"], [["a"], ["a"]])[0] == 0.0


def test_cider_idf_depends_on_the_scored_set() -> None:
    # what --limit does: the same caption scores differently with more images around it
    alone = cider_d(["a dog runs"], [["a dog runs"]])[0]
    with_others = cider_d(["a dog runs", "a cat sits"], [["a dog runs"], ["a cat sits"]])[0]
    assert alone == 0.0  # one image: log(1) - log(1) = 0 for everything
    assert with_others > 0


def test_bleu_by_hand() -> None:
    assert bleu(["the cat sat on the mat"], [["the cat sat on the mat"]])[3] == pytest.approx(1.0)
    # all precisions 1, hypothesis 4 words vs reference 6: brevity penalty exp(1 - 6/4)
    assert bleu(["the cat sat on"], [["the cat sat on the mat"]])[3] == pytest.approx(math.exp(-0.5))
    # the closest reference (3 words) is shorter than the hypothesis: no penalty
    assert bleu(["the cat sat on"], [["the cat sat", "the cat sat on the mat"]])[3] == pytest.approx(1.0)
    # equally close references (3 and 5 words for 4): the shorter one counts -> no penalty
    assert bleu(["a b c d"], [["a b c", "a b c d e"]])[3] == pytest.approx(1.0)
    # corpus level: n-gram counts are summed before the precisions are taken
    p = [7 / 8, 4 / 6, 2 / 4, 1 / 2]
    scores = bleu(["a b c d", "e f g h"], [["a b c d"], ["e f x h"]])
    assert scores[3] == pytest.approx(math.prod(p) ** 0.25)
    assert scores[0] == pytest.approx(7 / 8)


def test_caption_metrics_tokenize_first() -> None:
    examples = [example(["A dog runs."]), example(["Two cats, sitting!"])]
    assert score("bleu4", ["a dog runs", "two cats sitting"], examples) == pytest.approx(
        bleu(["a dog runs", "two cats sitting"], [["a dog runs"], ["two cats sitting"]])[3]
    )
    assert tokenize_for_eval("Two cats, sitting!") == "two cats sitting"
    assert score("cider", ["A dog runs!", "two cats sitting"], examples) == pytest.approx(
        cider_d(["a dog runs", "two cats sitting"], [["a dog runs"], ["two cats sitting"]])[0]
    )


def _random_captions(seed: int) -> tuple[list[str], list[list[str]]]:
    rng = random.Random(seed)
    vocab = [
        "a",
        "the",
        "dog",
        "cat",
        "man",
        "woman",
        "red",
        "blue",
        "runs",
        "sits",
        "on",
        "in",
        "grass",
        "street",
        "table",
        "with",
        "ball",
    ]
    hyps, refs = [], []
    for _ in range(25):
        refs.append([" ".join(rng.choices(vocab, k=rng.randint(3, 12))) for _ in range(rng.randint(1, 5))])
        base = rng.choice(refs[-1]).split()
        hyp = [w if rng.random() < 0.6 else rng.choice(vocab) for w in base[: rng.randint(1, len(base))]]
        hyps.append(" ".join(hyp))
    return hyps, refs


def test_cider_and_bleu_match_pycocoevalcap() -> None:
    cider_mod = pytest.importorskip("pycocoevalcap.cider.cider")
    bleu_mod = pytest.importorskip("pycocoevalcap.bleu.bleu")
    for seed in range(3):
        hyps, refs = _random_captions(seed)
        gts = {i: r for i, r in enumerate(refs)}
        res = {i: [h] for i, h in enumerate(hyps)}
        ref_mean, ref_scores = cider_mod.Cider().compute_score(gts, res)
        mean, scores = cider_d(hyps, refs)
        assert mean == pytest.approx(float(ref_mean), abs=1e-9)
        assert scores == pytest.approx([float(s) for s in ref_scores], abs=1e-9)
        ref_bleu, _ = bleu_mod.Bleu(4).compute_score(gts, res, verbose=0)
        assert bleu(hyps, refs) == pytest.approx(ref_bleu, abs=1e-12)


# ------------------------------------------------------------------------------ classification


def test_accuracy() -> None:
    examples = [
        example(["yes"], choices=["no", "yes"], label="yes"),
        example(["no"], choices=["no", "yes"], label="no"),
        example(["The red one."]),  # free-form: normalized exact match to any answer
        example(["blue", "navy"]),
    ]
    assert score("accuracy", ["yes", "yes", "the red one", "Navy!"], examples) == pytest.approx(3 / 4)


def test_roc_auc_by_hand_with_ties() -> None:
    # positives score 0.9 and 0.5, negatives 0.9 and 0.1: of the 4 (pos, neg) pairs one
    # is tied (1/2), two are won, one lost -> 2.5 / 4
    assert roc_auc_score([1, 0, 1, 0], [0.9, 0.9, 0.5, 0.1]) == pytest.approx(0.625)
    assert average_ranks([0.9, 0.9, 0.5, 0.1]) == [3.5, 3.5, 2.0, 1.0]
    assert roc_auc_score([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert math.isnan(roc_auc_score([1, 1], [0.2, 0.3]))


def test_roc_auc_metric_uses_the_last_choice_probability() -> None:
    examples = [
        example(["yes"], choices=["no", "yes"], label="yes"),
        example(["no"], choices=["no", "yes"], label="no"),
        example(["yes"], choices=["no", "yes"], label="yes"),
        example(["no"], choices=["no", "yes"], label="no"),
    ]
    # log-likelihoods (no, yes): P(yes) = 0.88, 0.88, 0.62, 0.27 -> the tie case above
    choice_scores = [[-2.0, 0.0], [-3.0, -1.0], [-1.0, -0.5], [-1.0, -2.0]]
    predictions = ["yes", "yes", "yes", "no"]
    assert score("roc_auc", predictions, examples, choice_scores) == pytest.approx(0.625)
    # without scores: the hard predictions are ranked (1, 1, 1, 0)
    assert score("roc_auc", predictions, examples) == pytest.approx((1 + 0.5 + 1 + 0.5) / 4)


# ------------------------------------------------------------------------------ ASR


def test_transcript_normalization() -> None:
    assert normalize_transcript("  Don't STOP,  now!\n") == "dont stop now"
    assert normalize_transcript("well-known \u201cquote\u201d") == "well known quote"
    assert normalize_transcript("it\u2019s 3 o'clock.") == "its 3 oclock"


def test_wer_and_cer_by_hand() -> None:
    assert edit_distance("kitten", "sitting") == 3
    # one substitution (sat -> sit) and one deletion (the): 2 / 6
    assert error_rate(["the cat sit on mat"], ["The cat sat on the mat."]) == pytest.approx(2 / 6)
    # corpus level: (2 + 0) edits over (6 + 2) reference words
    examples = [example(["The cat sat on the mat."]), example(["hello world"])]
    assert score("wer", ["the cat sit on mat", "Hello, world!"], examples) == pytest.approx(2 / 8)
    # insertions count: WER can exceed 1
    assert score("wer", ["a b c d"], [example(["a"])]) == pytest.approx(3.0)
    # CER over characters, spaces included: "abd" vs "abc" -> 1 / 3; "ab c" vs "abc" -> 1 / 3
    assert score("cer", ["abd", "ab c"], [example(["abc"]), example(["abc"])]) == pytest.approx(2 / 6)
