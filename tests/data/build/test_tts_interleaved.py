"""`--format tts-interleaved` and the espeak-ng engine: spans aligned with transcripts."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from build_helpers import build, read_back

from mmpretrain.cli import main
from mmpretrain.data.build.tts import engine_name, synthesize
from mmpretrain.data.build.tts_interleaved import document_segments, split_spans, spoken_mask
from mmpretrain.errors import UserError

DOCS = [
    "The lantern swung slowly. The cart rolled down the hill toward the river, and nobody "
    "in the village had seen such a cold morning in many years!",
    "Short one.\n\nA second paragraph follows here; it has a few more words than the first "
    "one, and it ends with a question?",
    "Numbers like 1,234 and 5.6 stay words; so do dashes -- and quotes 'like these' in text.",
]


def _words(text: str) -> list[str]:
    return text.split()


def test_split_spans_keeps_every_word_and_prefers_sentence_ends() -> None:
    text = DOCS[0] + " " + DOCS[1]
    spans = split_spans(text, 8)
    assert [w for s in spans for w in s.words] == _words(text)
    assert all(1 <= len(s.words) <= 8 for s in spans)
    assert all(text[s.start : s.end].split() == list(s.words) for s in spans)
    assert [s.transcript for s in spans[:4]] == [
        "The lantern swung slowly.",  # 4 words (half of 8), then a sentence end
        "The cart rolled down the hill toward the",  # no sentence end: cut at 8 words
        "river, and nobody in the village had seen",
        "such a cold morning in many years!",
    ]
    paragraphs = split_spans("One two three\n\nfour five six seven eight nine", 4)
    assert [s.transcript for s in paragraphs] == ["One two three", "four five six seven", "eight nine"]
    assert split_spans("   \n ", 5) == []


def test_spoken_mask_ratio_and_determinism() -> None:
    spans = split_spans(" ".join(f"word{i}" for i in range(12 * 500)), 12)
    for ratio in (0.0, 0.3, 1.0):
        drawn = [m for doc in range(40) for m in spoken_mask(spans, ratio, seed=7, document=doc)]
        n = len(drawn)
        assert abs(sum(drawn) - ratio * n) <= 4 * math.sqrt(n * ratio * (1 - ratio)) + 1e-9
    assert spoken_mask(spans, 0.5, 1, 3) == spoken_mask(spans, 0.5, 1, 3)
    assert spoken_mask(spans, 0.5, 1, 3) != spoken_mask(spans, 0.5, 2, 3)
    assert spoken_mask(spans, 0.5, 1, 3) != spoken_mask(spans, 0.5, 1, 4)
    unspeakable = split_spans("-- ** ## !!", 12)
    assert spoken_mask(unspeakable, 1.0, 0, 0) == [False]


@pytest.mark.parametrize("mode", ["replace", "accompany"])
def test_document_segments_align_transcripts(mode: str) -> None:
    text = DOCS[1]
    spans = split_spans(text, 5)
    spoken = [i % 2 == 1 for i in range(len(spans))]
    segments = document_segments(text, spans, spoken, mode)
    flat: list[str] = []
    for i, seg in enumerate(segments):
        if seg.kind == "audio":
            assert seg.speak == seg.text and seg.text == spans[seg.meta["span"]].transcript
            flat += _words(seg.text or "")
            if mode == "accompany":  # the span's own text follows its audio
                assert segments[i + 1].kind == "text" and _words(segments[i + 1].text or "") == _words(
                    seg.text
                )
        elif mode == "replace" or i == 0 or segments[i - 1].kind != "audio":
            flat += _words(seg.text or "")
    assert flat == _words(text)
    kinds = [s.kind for s in segments]
    assert "text" in kinds and kinds.count("audio") == sum(spoken)
    if mode == "replace":
        assert all(a != b or a == "audio" for a, b in itertools.pairwise(kinds))  # text runs merged


def _corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "wiki.jsonl"
    corpus.write_text("\n".join([json.dumps({"text": d}) for d in DOCS] + ["{broken"]) + "\n")
    return corpus


def _flat_words(sample, mode: str) -> list[str]:
    words: list[str] = []
    previous = None
    for seg in sample.segments:
        if seg.kind == "audio" or mode == "replace" or previous != "audio":
            words += _words(seg.text or "")
        previous = seg.kind
    return words


@pytest.mark.parametrize("mode", ["replace", "accompany"])
def test_build_round_trip_spans_aligned(tmp_path: Path, mode: str) -> None:
    index = build(
        "tts-interleaved",
        tmp_path,
        input=_corpus(tmp_path),
        tts_ratio=0.5,
        tts_span_words=6,
        tts_mode=mode,
        seed=3,
        dedup_media=False,
    )
    samples = read_back(tmp_path / "out")
    assert len(samples) == 3 and index["build"]["errors_by_reason"] == {"invalid_json": 1}
    assert "wiki.jsonl:4" in index["build"]["examples"][0]
    spoken = 0
    for sample, doc in zip(samples, DOCS, strict=True):
        assert sample.source == "tts-wiki" and sample.meta["tts_mode"] == mode
        assert _flat_words(sample, mode) == _words(doc)
        audio = [s for s in sample.segments if s.kind == "audio"]
        assert len(audio) == sample.meta["spoken_spans"]
        for seg in audio:
            assert seg.sample_rate == 16000 and seg.audio is not None and len(seg.audio) > 1600
            assert abs(seg.meta["seconds"] - len(seg.audio) / 16000) < 1e-3
            # the same samples as synthesizing the transcript on its own: an utterance
            # does not depend on what was spoken before it
            stored = np.round(seg.audio * 32768).astype(np.int16)
            assert np.array_equal(stored, synthesize(seg.text or "", "en", 160))
        spoken += len(audio)
    assert spoken == index["audio"] and spoken > 0


def test_audio_grows_with_transcript_and_is_deterministic() -> None:
    lengths = [len(synthesize(" ".join(["hello"] * n))) for n in (1, 3, 6, 12)]
    assert lengths == sorted(lengths) and lengths[-1] > 4 * lengths[0]
    first = synthesize("Deterministic output, please.")
    synthesize("Something else in between, to move any state on.")
    assert np.array_equal(first, synthesize("Deterministic output, please."))


def test_library_engine_matches_espeak_command_line() -> None:
    if engine_name() != "library":
        pytest.skip("libespeak-ng is not available: only the subprocess engine runs")
    text = "The quick brown fox jumps over the lazy dog, and then it runs away."
    fast = synthesize(text, "en", 175, engine="library").astype(np.float64)
    slow = synthesize(text, "en", 175, engine="subprocess").astype(np.float64)
    assert abs(len(fast) - len(slow)) <= 16000 * 0.005
    n = min(len(fast), len(slow))
    assert np.corrcoef(fast[:n], slow[:n])[0, 1] > 0.99
    # the command line runs in a fresh process: equal samples also show that the library
    # engine does not carry state from earlier utterances into this one
    synthesize("Something spoken before, to move any state on.", "en", 175, engine="library")
    assert np.array_equal(synthesize(text, "en", 175, engine="library"), slow.astype(np.int16))


def test_unknown_voice_is_a_user_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(UserError, match="voice"):
        synthesize("hello", "no-such-voice")
    with pytest.raises(ValueError):
        synthesize("  ")
    corpus = _corpus(tmp_path)
    argv = [
        "data",
        "build",
        "--format",
        "tts-interleaved",
        "--input",
        str(corpus),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*argv, "--voice", "no-such-voice"]) == 2
    err = capsys.readouterr().err
    assert "no-such-voice" in err and err.count("\n") == 1
