"""SkipCounter: bad records are counted by reason, logged, and stop the run past a limit."""

from __future__ import annotations

import logging

import pytest

from mmpretrain.data.skips import KEPT_EXAMPLES, LOGGED_SKIPS, SkipCounter
from mmpretrain.errors import DataFormatError


def test_counts_good_and_skipped_by_reason() -> None:
    skips = SkipCounter(name="corpus")
    skips.ok()
    skips.ok(3)
    skips.skip("invalid_json", "corpus.jsonl:17", "invalid JSON: Expecting value")
    skips.skip("missing_field", "corpus.jsonl:18")
    skips.skip("invalid_json", "corpus.jsonl:19", "invalid JSON: Expecting value")
    assert skips.good == 4
    assert skips.skipped == 3
    assert skips.seen == 7
    assert skips.by_reason == {"invalid_json": 2, "missing_field": 1}
    assert skips.as_dict() == {
        "samples": 4,
        "skipped": 3,
        "errors_by_reason": {"invalid_json": 2, "missing_field": 1},
    }
    assert skips.examples[0] == "corpus.jsonl:17: invalid JSON: Expecting value (skipped; invalid_json)"
    assert skips.examples[1] == "corpus.jsonl:18: missing field (skipped; missing_field)"


def test_logs_first_few_and_keeps_first_examples(caplog: pytest.LogCaptureFixture) -> None:
    skips = SkipCounter(max_skips=None)
    with caplog.at_level(logging.WARNING, logger="mmpretrain.data"):
        for i in range(KEPT_EXAMPLES + 10):
            skips.skip("empty", f"f.txt:{i}", "document is empty")
    messages = [r.getMessage() for r in caplog.records if r.name == "mmpretrain.data"]
    assert messages[0] == "f.txt:0: document is empty (skipped; empty)"
    # LOGGED_SKIPS messages plus one line saying that the rest are only counted
    assert len(messages) == LOGGED_SKIPS + 1
    assert "not logged" in messages[-1]
    assert len(skips.examples) == KEPT_EXAMPLES
    assert skips.examples[-1].startswith(f"f.txt:{KEPT_EXAMPLES - 1}:")
    assert skips.skipped == KEPT_EXAMPLES + 10


def test_raises_once_over_max_skips() -> None:
    skips = SkipCounter(max_skips=2, name="corpus.jsonl")
    skips.skip("invalid_json", "corpus.jsonl:17", "invalid JSON: Expecting value")
    skips.skip("invalid_json", "corpus.jsonl:18", "invalid JSON: Expecting value")
    with pytest.raises(DataFormatError) as info:
        skips.skip("invalid_json", "corpus.jsonl:19", "invalid JSON: Expecting value")
    assert str(info.value) == (
        "too many bad records in corpus.jsonl: 3 skipped (limit 2); first: corpus.jsonl:17: "
        "invalid JSON: Expecting value (skipped; invalid_json); raise data.max_skips or fix the data"
    )


def test_default_limit_is_100_and_zero_means_strict() -> None:
    skips = SkipCounter()
    for i in range(100):
        skips.skip("empty", f"x:{i}")
    with pytest.raises(DataFormatError, match="101 skipped \\(limit 100\\)"):
        skips.skip("empty", "x:100")
    with pytest.raises(DataFormatError, match="1 skipped \\(limit 0\\)"):
        SkipCounter(max_skips=0).skip("empty", "x:0")


def test_no_limit() -> None:
    skips = SkipCounter(max_skips=None)
    for i in range(500):
        skips.skip("empty", f"x:{i}")
    assert skips.skipped == 500


def test_fraction_limit_applies_after_100_seen() -> None:
    skips = SkipCounter(max_skips=None, max_fraction=0.1, name="c4")
    for i in range(20):  # 100% bad, but too few records seen to judge
        skips.skip("empty", f"x:{i}")
    skips.ok(79)  # 99 seen
    with pytest.raises(DataFormatError, match=r"c4: 20 of 100 skipped \(20.0%, limit 10.0%\)"):
        skips.ok()  # the 100th record crosses the threshold although it is good


def test_fraction_within_limit_passes() -> None:
    skips = SkipCounter(max_skips=None, max_fraction=0.1)
    for i in range(1000):
        if i % 20 == 0:
            skips.skip("empty", f"x:{i}")
        else:
            skips.ok()
    assert skips.skipped == 50


@pytest.mark.parametrize(("kwargs"), [{"max_skips": -1}, {"max_fraction": 1.5}, {"max_fraction": -0.1}])
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SkipCounter(**kwargs)
