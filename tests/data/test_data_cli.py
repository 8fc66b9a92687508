"""`mmpt data inspect` and `mmpt data stats` on good and corrupt shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmpretrain.cli import main
from mmpretrain.data.demo_data import build_demo_dataset


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    build_demo_dataset(out, samples=16, shards=2, seed=1, progress=False)
    corrupt = out / "shard-000001.tar"
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])  # truncated shard
    return out


def test_stats_json_is_the_only_stdout(shards: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", str(shards / "shard-*.tar"), "--json"]) == 0
    out, err = capsys.readouterr()
    stats = json.loads(out)  # stdout holds exactly one JSON object
    assert stats["shards"] == 2
    assert 8 <= stats["samples"] < 16  # the first shard whole, part of the truncated one
    assert stats["skipped"] >= 1 and "corrupt_tar" in stats["errors_by_reason"]
    assert stats["images"] > 0 and stats["audio_seconds"] > 0 and stats["text_tokens"] > 0
    assert "[1/2]" in err  # progress goes to stderr


def test_stats_human_and_inspect(shards: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", str(shards / "shard-*.tar")]) == 0
    out = capsys.readouterr().out
    assert "corrupt_tar" in out and "samples" in out
    assert main(["data", "inspect", str(shards / "shard-000000.tar"), "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("(source 'demo'") == 3 and "image 64x64" in out


def test_missing_shards_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", str(tmp_path / "none-*.tar"), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1
