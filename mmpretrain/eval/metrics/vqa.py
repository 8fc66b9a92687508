"""VQA accuracy exactly as the official evaluation computes it.

Reproduces ``VQAEval.evaluate`` of the official VQA API (GT-Vision-Lab/VQA,
``PythonEvaluationTools/vqaEvaluation/vqaEval.py``, last revision "Fixed processing answers
bug"), quirks included, because published numbers depend on them:

1. The prediction and every ground-truth answer get ``\\n``/``\\t`` -> space and
   ``strip()``.
2. Only when the ground-truth answers of a question are *not all identical* are they and
   the prediction normalized (:func:`process_punctuation`, then
   :func:`process_digit_article`: lower case, number words -> digits, articles dropped,
   contractions restored). When the annotators agree, the comparison is exact: ``"Yes"``
   or ``"two"`` scores 0 against ten ``"yes"`` / ``"2"``.
3. Accuracy = mean over the 10 leave-one-out subsets of 9 answers of
   ``min(1, #matches / 3)``: 1.0 for an answer given by at least 4 annotators, 0.9 for 3,
   0.6 for 2, 0.3 for 1.
4. :func:`process_punctuation`'s period regex ``(?!<=\\d)(\\.)(?!\\d)`` is the official
   one (a lookahead where a lookbehind was meant) and is applied with
   ``re.sub(..., count=re.UNICODE)``: as in the official call, ``re.UNICODE`` (32) lands in
   the ``count`` argument, so at most 32 periods are removed.

The same definition serves VQAv2, OK-VQA, TextVQA and VizWiz (their evaluation scripts
use this code). Answers lists shorter or longer than 10 are handled the same way (leave
one out over however many there are).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..types import EvalExample
from . import ChoiceScores, register_metric

CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip
"""The official map (keys with capitals, e.g. "Im", can never match lower-cased words: kept as is)."""

NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = ("a", "an", "the")
PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")


def process_punctuation(text: str) -> str:
    """Official ``processPunctuation``: drop or space out punctuation, strip periods.

    A punctuation mark is deleted when it touches a space anywhere in the text (or the text
    has a digit-comma-digit), otherwise replaced by a space. Periods not followed by a digit
    are removed (at most 32, see the module docstring).
    """
    out = text
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=int(re.UNICODE))


def process_digit_article(text: str) -> str:
    """Official ``processDigitArticle``: lower case, number words -> digits, no articles, contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """Both official normalization steps (what a prediction gets when annotators disagree)."""
    return process_digit_article(process_punctuation(_clean(text)))


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_score(prediction: str, answers: Sequence[str]) -> float:
    """Official accuracy of one prediction against its (usually 10) ground-truth answers."""
    if not answers:
        raise ValueError("vqa_score: the question has no ground-truth answers")
    gts = [_clean(a) for a in answers]
    pred = _clean(prediction)
    if len(set(gts)) > 1:  # the official quirk: normalize only when the annotators disagree
        gts = [process_digit_article(process_punctuation(a)) for a in gts]
        pred = process_digit_article(process_punctuation(pred))
    matches = [g == pred for g in gts]
    total = sum(matches)
    # leave each answer out in turn: the other answers hold `total - matches[i]` matches
    return sum(min(1.0, (total - m) / 3) for m in matches) / len(gts)


@register_metric("vqa_accuracy")
def vqa_accuracy(
    predictions: Sequence[str], examples: Sequence[EvalExample], choice_scores: ChoiceScores = None
) -> float:
    """Mean official VQA accuracy over the examples (references: ``example.answers``)."""
    return sum(vqa_score(p, ex.answers) for p, ex in zip(predictions, examples, strict=True)) / len(examples)


_ANSWER_CUES = re.compile(r"(Question:|Answer:|Short answer:|Output:|<image>|<audio>)")


def postprocess_vqa_generation(text: str) -> str:
    """A generated answer cut where the model starts the next turn (first line, before any cue).

    Like OpenFlamingo's post-processing: keeps the text before the first newline and before
    any "Question:"/"Answer:"/"Short answer:"/"Output:" or media placeholder, stripped. The
    metric itself applies only the official normalization.
    """
    first = text.strip().split("\n", 1)[0]
    return _ANSWER_CUES.split(first, 1)[0].strip()
