"""`--format text`: corpora -> text-only shards, with skips and near-duplicate removal counted."""

from __future__ import annotations

import json
from pathlib import Path

from build_helpers import build, read_back

from mmpretrain.cli import main


def test_jsonl_round_trip_with_bad_lines_counted(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    docs = [f"document number {i} talks about topic {i * 7} at some length." for i in range(5)]
    lines = [json.dumps({"body": d}) for d in docs[:3]] + ["{not json", json.dumps({"other": 1})]
    lines += [json.dumps({"body": d}) for d in docs[3:]]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    index = build("text", tmp_path, input=corpus, text_field="body")
    assert [s.segments[0].text for s in read_back(tmp_path / "out")] == docs
    assert index["samples"] == 5 and index["build"]["skipped"] == 2
    assert sum(index["build"]["errors_by_reason"].values()) == 2
    assert any("corpus.jsonl:4" in e for e in index["build"]["examples"])
    assert index["shards"][0]["samples"] == 5


def test_dedup_text_drops_near_duplicates_only_when_asked(tmp_path: Path) -> None:
    base = " ".join(f"word{i}" for i in range(80))
    near = base.replace("word40", "changed")  # Jaccard of 5-gram sets ~0.86
    other = " ".join(f"other{i}" for i in range(80))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in (base, near, other)) + "\n")
    kept = build("text", tmp_path, input=corpus)
    assert kept["samples"] == 3
    deduped = build("text", tmp_path, input=corpus, dedup_text=True)
    assert deduped["samples"] == 2
    assert deduped["build"]["duplicates_removed"]["text_documents"] == 1
    assert [s.segments[0].text for s in read_back(tmp_path / "out")] == [base, other]


def test_cli_build_text_and_refuse_non_empty_out(tmp_path: Path, capsys) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("First paragraph of the file.\n\nSecond paragraph here.\n", encoding="utf-8")
    out = tmp_path / "shards"
    assert main(["data", "build", "--format", "text", "--input", str(corpus), "--out", str(out)]) == 0
    assert "built 1 samples" in capsys.readouterr().out
    assert main(["data", "build", "--format", "text", "--input", str(corpus), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    argv = [
        "data",
        "build",
        "--format",
        "text",
        "--input",
        str(tmp_path / "missing.txt"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "missing.txt" in err and err.count("\n") == 1
