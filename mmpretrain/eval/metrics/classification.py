"""Classification accuracy and ROC-AUC.

Classification tasks rank each example's ``choices`` by the log-likelihood of their
continuation; the prediction is the top choice and ``choice_scores`` holds the scores.

- ``accuracy``: the fraction of predictions equal to ``example.label``. For examples
  without a label (free-form answers, e.g. spoken QA) a prediction is right when its
  normalized form (:func:`~mmpretrain.eval.metrics.asr.normalize_transcript`: lower case,
  no punctuation, single spaces) equals that of any of ``example.answers``.
- ``roc_auc``: the positive class is each example's *last* choice (``yes`` in
  ``["no", "yes"]``); an example's score is the softmax probability of that choice over
  its choices' log-likelihoods (without ``choice_scores``, the hard prediction: 1 or 0).
  AUC is the Mann-Whitney statistic with tied scores given their average rank (equal to
  scikit-learn's ``roc_auc_score``). It is undefined (NaN) when the examples hold only
  one class, which small ``--limit`` values can cause.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..types import EvalExample
from . import ChoiceScores, register_metric
from .asr import normalize_transcript


def _correct(prediction: str, example: EvalExample) -> bool:
    if example.label is not None:
        return prediction == example.label
    if not example.answers:
        raise ValueError(f"example {example.id} has neither a label nor answers")
    pred = normalize_transcript(prediction)
    return any(pred == normalize_transcript(a) for a in example.answers)


@register_metric("accuracy")
def accuracy(
    predictions: Sequence[str], examples: Sequence[EvalExample], choice_scores: ChoiceScores = None
) -> float:
    """Fraction of correct predictions (label match, or normalized exact match to an answer)."""
    return sum(_correct(p, ex) for p, ex in zip(predictions, examples, strict=True)) / len(examples)


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of ``values`` in ascending order, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def roc_auc_score(labels: Sequence[int], scores: Sequence[float]) -> float:
    """ROC-AUC of binary ``labels`` (1 = positive) ranked by ``scores``; NaN with one class."""
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(scores)
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def positive_probability(scores: Sequence[float]) -> float:
    """Softmax probability of the last choice given all choices' log-likelihoods."""
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    return weights[-1] / sum(weights)


@register_metric("roc_auc")
def roc_auc(
    predictions: Sequence[str], examples: Sequence[EvalExample], choice_scores: ChoiceScores = None
) -> float:
    """ROC-AUC with the last choice as the positive class (see the module docstring)."""
    labels, scores = [], []
    for i, (pred, ex) in enumerate(zip(predictions, examples, strict=True)):
        if not ex.choices or ex.label is None:
            raise ValueError(f"roc_auc: example {ex.id} needs choices and a label")
        positive = ex.choices[-1]
        labels.append(int(ex.label == positive))
        if choice_scores is None:
            scores.append(float(pred == positive))
        else:
            row = choice_scores[i]
            if len(row) != len(ex.choices):
                raise ValueError(
                    f"roc_auc: example {ex.id} has {len(ex.choices)} choices but {len(row)} scores"
                )
            scores.append(positive_probability(row))
    return roc_auc_score(labels, scores)
