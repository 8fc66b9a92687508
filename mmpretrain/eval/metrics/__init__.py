"""Metrics by name, each per its benchmark's official definition.

``METRICS[name](predictions, examples, choice_scores) -> float``: ``predictions`` are the
model's answers as text (for classification tasks: the chosen choice), ``examples`` the
:class:`~mmpretrain.eval.types.EvalExample` objects they answer (their ``answers``,
``label`` and ``choices`` are the references), ``choice_scores`` the per-choice
log-likelihoods of classification tasks (``roc_auc`` needs them; others ignore them).

Every metric returns a fraction as its reference implementation does before any
percentage formatting: VQA accuracy, accuracy and ROC-AUC in [0, 1]; CIDEr-D on
pycocoevalcap's scale (x10 inside, so about 0-10, typically 0-2); BLEU-4 in [0, 1];
WER and CER as error rates (lower is better, can exceed 1).

========== ============================ =================================================
name       module                       definition
========== ============================ =================================================
vqa_accuracy :mod:`.vqa`                official VQA eval: normalization, min(#match/3, 1)
                                        averaged over the 10 choose-9 subsets
cider      :mod:`.caption`              CIDEr-D (pycocoevalcap), PTB-style tokenization
bleu4      :mod:`.caption`              corpus BLEU-4, closest-reference brevity penalty
accuracy   :mod:`.classification`       label match (classify) / normalized exact match
roc_auc    :mod:`.classification`       ROC-AUC of the last choice's probability
wer, cer   :mod:`.asr`                  corpus word / character error rate
========== ============================ =================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mmpretrain.errors import UserError

from ..types import EvalExample

ChoiceScores = Sequence[Sequence[float]] | None
Metric = Callable[[Sequence[str], Sequence[EvalExample], ChoiceScores], float]

METRICS: dict[str, Metric] = {}
"""Metric name -> function(predictions, examples, choice_scores) -> float."""

LOWER_IS_BETTER: set[str] = set()
"""Names of metrics where a smaller value is better (error rates)."""


def register_metric(name: str, *, lower_is_better: bool = False) -> Callable[[Metric], Metric]:
    """Decorator adding a metric to :data:`METRICS`; a duplicate name is an error."""

    def decorate(fn: Metric) -> Metric:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        METRICS[name] = fn
        if lower_is_better:
            LOWER_IS_BETTER.add(name)
        return fn

    return decorate


def score(
    metric: str,
    predictions: Sequence[str],
    examples: Sequence[EvalExample],
    choice_scores: ChoiceScores = None,
) -> float:
    """Score ``predictions`` (one per example, same order) with the metric called ``metric``."""
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; known: {', '.join(sorted(METRICS))}")
    if len(predictions) != len(examples):
        raise ValueError(f"{metric}: {len(predictions)} predictions for {len(examples)} examples")
    if choice_scores is not None and len(choice_scores) != len(examples):
        raise ValueError(f"{metric}: {len(choice_scores)} choice score rows for {len(examples)} examples")
    if not examples:
        raise UserError(f"{metric}: nothing to score (no examples)")
    return METRICS[metric](predictions, examples, choice_scores)


# Importing the metric modules registers their metrics.
from . import asr, caption, classification, vqa  # noqa: E402

__all__ = [
    "LOWER_IS_BETTER",
    "METRICS",
    "Metric",
    "asr",
    "caption",
    "classification",
    "register_metric",
    "score",
    "vqa",
]
