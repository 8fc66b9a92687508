"""Word and character error rates with a documented text normalization.

Both sides (reference and hypothesis) are normalized by :func:`normalize_transcript`:

1. Unicode NFKC, then lower case (``str.casefold``);
2. apostrophes (``'`` and ``’``) are deleted, joining the word: ``don't`` -> ``dont``
   (LibriSpeech references keep apostrophes, models may not: both sides match either way);
3. every other punctuation mark or symbol (Unicode categories P* and S*) becomes a space:
   ``well-known`` -> ``well known``, ``"hi," she said.`` -> ``hi she said``;
4. whitespace runs collapse to one space; leading and trailing space is removed.

Numbers are not spelled out (``3`` and ``three`` differ) and no spelling variants are
merged (unlike Whisper's English normalizer). Error rates are corpus level: the sum of
Levenshtein edits (substitutions + deletions + insertions) over all utterances divided by
the total reference length (words for WER; characters, spaces between words included, for
CER). They can exceed 1 when a model inserts a lot.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from ..types import EvalExample
from . import ChoiceScores, register_metric


def normalize_transcript(text: str) -> str:
    """The normalization in the module docstring: lower case, no punctuation, single spaces."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("'", "").replace("\u2019", "")
    chars = [" " if unicodedata.category(c)[0] in "PS" else c for c in text]
    return " ".join("".join(chars).split())


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance between two sequences (unit costs)."""
    if len(ref) < len(hyp):
        ref, hyp = hyp, ref
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def error_rate(hypotheses: Sequence[str], references: Sequence[str], unit: str = "word") -> float:
    """Corpus WER (``unit="word"``) or CER (``unit="char"``) after normalization."""
    edits = total = 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = normalize_transcript(hyp), normalize_transcript(ref)
        hs, rs = (h.split(), r.split()) if unit == "word" else (list(h), list(r))
        edits += edit_distance(rs, hs)
        total += len(rs)
    if total == 0:
        return 0.0 if edits == 0 else float("inf")
    return edits / total


def _references(examples: Sequence[EvalExample]) -> list[str]:
    refs = []
    for ex in examples:
        if not ex.answers:
            raise ValueError(f"example {ex.id} has no reference transcript")
        refs.append(ex.answers[0])
    return refs


@register_metric("wer", lower_is_better=True)
def wer(
    predictions: Sequence[str], examples: Sequence[EvalExample], choice_scores: ChoiceScores = None
) -> float:
    """Corpus word error rate against ``example.answers[0]``."""
    return error_rate(predictions, _references(examples), "word")


@register_metric("cer", lower_is_better=True)
def cer(
    predictions: Sequence[str], examples: Sequence[EvalExample], choice_scores: ChoiceScores = None
) -> float:
    """Corpus character error rate against ``example.answers[0]``."""
    return error_rate(predictions, _references(examples), "char")
