"""Captioning metrics as the COCO caption evaluation (pycocoevalcap) computes them.

Both metrics run on text tokenized by :func:`ptb_tokenize`, a pure-Python stand-in for
the Stanford PTBTokenizer that pycocoevalcap runs in Java (``-preserveLines -lowerCase``,
then dropping punctuation tokens). No Java is needed. On ordinary captions (words,
digits, commas, periods, quotes, apostrophes, brackets, hyphens) it gives the same tokens;
rarer CoreNLP behaviours are not reproduced (abbreviation lists, ``/`` escaping, ``&amp;``
style entities, splitting of ``cannot``), so a score can differ in the last digits from
the Java pipeline on text that has them.

**CIDEr-D** (Vedantam et al. 2015, pycocoevalcap's ``Cider``): n-grams 1-4, TF-IDF vectors
with IDF ``log(#images) - log(max(1, df))`` where ``df`` counts the *evaluated* images whose
references contain the n-gram; per n, cosine-like similarity with clipping
(``min(hyp, ref) * ref``) and a Gaussian length penalty ``exp(-delta^2 / (2 * 6^2))``;
averaged over n and references, times 10. As in pycocoevalcap, the "length" in delta counts
the sentence's bigrams (its words minus one), not its words.

The IDF comes from the references of the images being scored, so ``--limit N`` changes it:
CIDEr on 100 images is not CIDEr on the 5,000-image Karpathy test split with 100 scored,
and it is noisy below a few hundred images. Compare numbers only at the same ``--limit``.

**BLEU-4** (Papineni et al. 2002, pycocoevalcap's ``Bleu(4)``): corpus level; clipped n-gram
counts summed over all hypotheses; geometric mean of the four precisions with the
``1e-15``/``1e-9`` smoothing pycocoevalcap uses; brevity penalty from the total hypothesis
length against the sum of each hypothesis's *closest* reference length (ties: the shorter).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence

from ..types import EvalExample
from . import ChoiceScores, register_metric

# Tokens pycocoevalcap's PTBTokenizer wrapper removes after tokenizing (brackets and double
# quotes become -LRB-/``/'' tokens in CoreNLP, so they are dropped here directly).
PTB_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
_DROPPED = PTB_PUNCTUATION | {'"', "(", ")", "[", "]", "{", "}"}
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_CLITIC = re.compile(r"^(.*[^'])(n't|'s|'re|'ve|'ll|'d|'m)$")
_INITIALISM = re.compile(r"^(?:[a-z]\.)+$")


def ptb_tokenize(text: str) -> list[str]:
    """PTB-style tokens of ``text``, lower-cased, with punctuation tokens removed.

    ``"A man's dog, (running)!"`` -> ``["a", "man", "'s", "dog", "running"]``. Clitics
    (``n't``, ``'s``, ``'re``, ``'ve``, ``'ll``, ``'d``, ``'m``) are split off as PTB does;
    hyphenated words and numbers with separators (``3.5``, ``1,000``, ``10:30``) stay whole;
    ``$`` and ``%`` are split from numbers; a word-final period is split off (then dropped)
    except in initialisms (``u.s.``).
    """
    text = text.replace("\n", " ").translate(_QUOTES).lower()
    text = re.sub(r"\.\.\.|--|[()\[\]{}\";?!$%]", r" \g<0> ", text)
    text = re.sub(r",(?!\d)|(?<!\d),|:(?!\d)|(?<!\d):", r" \g<0> ", text)
    out: list[str] = []
    for word in text.split():
        tail: list[str] = []
        while len(word) > 1 and word[0] in "'`" and not _CLITIC.match(word):
            out.append(word[0])  # an opening single quote
            word = word[1:]
        if word.endswith(".") and word.strip(".") and not _INITIALISM.match(word):
            tail.insert(0, ".")
            word = word[:-1]
        if len(word) > 1 and word.endswith("'") and not word.endswith("''"):
            tail.insert(0, "'")  # a closing quote or a plural possessive (dogs')
            word = word[:-1]
        match = _CLITIC.match(word)
        if match:
            out += [match.group(1), match.group(2)]
        else:
            out.append(word)
        out += tail
    return [t for t in out if t not in _DROPPED]


def tokenize_for_eval(text: str) -> str:
    """``text`` as pycocoevalcap's scorers receive it: PTB tokens joined by single spaces."""
    return " ".join(ptb_tokenize(text))


def _ngrams(words: Sequence[str], n: int = 4) -> Counter[tuple[str, ...]]:
    counts: Counter[tuple[str, ...]] = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


# ------------------------------------------------------------------------------ CIDEr-D


def cider_d(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], sigma: float = 6.0
) -> tuple[float, list[float]]:
    """CIDEr-D of already tokenized hypotheses (one per image) against their references.

    Returns (corpus score, per-image scores), the corpus score being the mean, as
    pycocoevalcap's ``Cider().compute_score`` returns them.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"cider_d: {len(hypotheses)} hypotheses for {len(references)} reference lists")
    n = 4
    test_counts = [_ngrams(h.split(), n) for h in hypotheses]
    ref_counts = [[_ngrams(r.split(), n) for r in refs] for refs in references]
    doc_freq: Counter[tuple[str, ...]] = Counter()
    for refs in ref_counts:
        doc_freq.update({g for ref in refs for g in ref})
    log_images = math.log(float(len(ref_counts)))

    def vector(
        counts: Counter[tuple[str, ...]],
    ) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
        vec: list[dict[tuple[str, ...], float]] = [defaultdict(float) for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            vec[k][gram] = float(tf) * (log_images - math.log(max(1.0, doc_freq[gram])))
            norm[k] += vec[k][gram] ** 2
            if k == 1:  # pycocoevalcap counts bigrams as the "length"
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    scores = []
    for test, refs in zip(test_counts, ref_counts, strict=True):
        if not refs:
            raise ValueError("cider_d: an image has no reference captions")
        vec, norm, length = vector(test)
        total = [0.0] * n
        for ref in refs:
            vec_ref, norm_ref, length_ref = vector(ref)
            delta = float(length - length_ref)
            for k in range(n):
                val = sum(min(v, vec_ref[k].get(g, 0.0)) * vec_ref[k].get(g, 0.0) for g, v in vec[k].items())
                if norm[k] != 0 and norm_ref[k] != 0:
                    val /= norm[k] * norm_ref[k]
                total[k] += val * math.exp(-(delta**2) / (2 * sigma**2))
        scores.append(sum(total) / n / len(refs) * 10.0)
    return sum(scores) / len(scores), scores


# ------------------------------------------------------------------------------ BLEU


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n of tokenized hypotheses, as pycocoevalcap's ``Bleu(n)`` (option closest)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"bleu: {len(hypotheses)} hypotheses for {len(references)} reference lists")
    tiny, small = 1e-15, 1e-9
    guess = [0] * n
    correct = [0] * n
    test_len = ref_len = 0
    for hyp, refs in zip(hypotheses, references, strict=True):
        if not refs:
            raise ValueError("bleu: a hypothesis has no references")
        words = hyp.split()
        max_counts: dict[tuple[str, ...], int] = {}
        lengths = []
        for ref in refs:
            ref_words = ref.split()
            lengths.append(len(ref_words))
            for gram, count in _ngrams(ref_words, n).items():
                max_counts[gram] = max(max_counts.get(gram, 0), count)
        test_len += len(words)
        ref_len += min((abs(length - len(words)), length) for length in lengths)[1]
        for k in range(n):
            guess[k] += max(0, len(words) - k)
        for gram, count in _ngrams(words, n).items():
            correct[len(gram) - 1] += min(max_counts.get(gram, 0), count)
    scores = []
    product = 1.0
    for k in range(n):
        product *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + tiny) / (ref_len + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


# ------------------------------------------------------------------------------ metrics


def _tokenized(
    predictions: Sequence[str], examples: Sequence[EvalExample]
) -> tuple[list[str], list[list[str]]]:
    hyps = [tokenize_for_eval(p) for p in predictions]
    refs = []
    for ex in examples:
        if not ex.answers:
            raise ValueError(f"example {ex.id} has no reference captions")
        refs.append([tokenize_for_eval(a) for a in ex.answers])
    return hyps, refs


@register_metric("cider")
def cider(
    predictions: Sequence[str], examples: Sequence[EvalExample], choice_scores: ChoiceScores = None
) -> float:
    """CIDEr-D of the captions against ``example.answers`` (IDF over these examples' references)."""
    return cider_d(*_tokenized(predictions, examples))[0]


@register_metric("bleu4")
def bleu4(
    predictions: Sequence[str], examples: Sequence[EvalExample], choice_scores: ChoiceScores = None
) -> float:
    """Corpus BLEU-4 of the captions against ``example.answers``."""
    return bleu(*_tokenized(predictions, examples))[3]
