"""Hostile data: shards (and build inputs) scraped from the web can be malicious.

- pickle-bearing members are never deserialised: a payload that would create a file
  proves nothing ran (through every reader: ShardReader with and without worker
  processes, `mmpt data stats`/`inspect`, text shard sources, training);
- tar members with absolute paths, ``../``, symlinks, hard links, devices are never
  written anywhere: the project extracts nothing (a source scan), and reading such shards
  writes no file outside (or inside) any directory;
- decompression bombs (huge PNG/JPEG dimensions, audio claiming hours) are rejected from
  their headers, at no memory cost;
- malformed JSON, bad UTF-8, zero-length media, references to missing members: skipped
  and counted once with their shard and key, every good sample around them delivered;
- the error budget stops a run whose data is mostly broken, with one clear line.

The catalogue of cases is ``hostile_inputs.py`` (also used by scripts/bench_reliability.py).
"""

from __future__ import annotations

import ast
import json
import zipfile
from collections import Counter
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from hostile_inputs import (
    HostileCase,
    HostileShards,
    Member,
    hostile_cases,
    text_json,
    write_hostile_shards,
    write_raw_tar,
)
from reliability_helpers import peak_rss_growth, run_quietly, tiny_run_config, train_argv, write_yaml

from mmpretrain.data.decoders import DecodeError, decode_member
from mmpretrain.data.error_budget import ErrorBudget, SkipEvent
from mmpretrain.data.reader import ReaderConfig, ShardReader
from mmpretrain.data.skips import SkipCounter
from mmpretrain.data.text_sources import ShardsSource, iter_documents
from mmpretrain.errors import DataFormatError

REPO = Path(__file__).resolve().parents[2]
CODE_DIRS = ("mmpretrain", "data", "encoders", "connectors", "scripts")


class Hostile:
    """A hostile dataset under ``root/work/shards`` and the places nothing may appear."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.marker = root / "PWNED"
        self.outside = root / "outside"
        self.outside.mkdir()
        self.secret = self.outside / "secret.json"
        self.secret.write_text(json.dumps({"segments": [{"kind": "text", "text": "SECRET"}]}))
        self.cases = hostile_cases(self.marker, self.outside)
        self.shards: HostileShards = write_hostile_shards(root / "work" / "shards", self.cases)

    def assert_nothing_ran_or_escaped(self) -> None:
        assert not self.marker.exists(), "a pickle payload was deserialised"
        assert sorted(p.name for p in self.outside.iterdir()) == ["secret.json"], "a member was written"
        written = {p.name for p in (self.root / "work").iterdir()}
        assert written == {"shards"}, written
        for case in self.cases:
            for path in case.escapes:
                assert not path.exists(), (case.name, path)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Hostile:
    return Hostile(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(autouse=True)
def _inside_work(hostile: Hostile, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # relative member names (../escape.json) would land next to the work directory
    monkeypatch.chdir(hostile.root / "work")
    yield
    hostile.assert_nothing_ran_or_escaped()


def reader_events(monkeypatch: pytest.MonkeyPatch) -> list[SkipEvent]:
    """Every skip event the readers count (ErrorBudget.record, spied on)."""
    events: list[SkipEvent] = []
    real = ErrorBudget.record

    def record(self: ErrorBudget, new: Any = (), good: int = 0) -> None:
        new = list(new)
        # the next epoch meets the same bad samples again (the budget counts them once)
        events.extend(e for e in new if e not in events)
        real(self, new, good)

    monkeypatch.setattr(ErrorBudget, "record", record)
    return events


def one_epoch(reader: ShardReader) -> list[str]:
    keys = []
    for sample, state in reader.samples():
        keys.append(sample.key)
        if min(state.positions) >= reader.samples_per_epoch:
            break
    return keys


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_hostile_case_is_skipped_once_and_every_good_sample_delivered(
    hostile: Hostile, monkeypatch: pytest.MonkeyPatch, num_workers: int
) -> None:
    from hostile_inputs import classify

    events = reader_events(monkeypatch)
    config = ReaderConfig(
        shards=[str(hostile.shards.directory)],
        shuffle_buffer=5,
        num_workers=num_workers,
        max_errors=1000,
        max_error_rate=1.0,
    )
    reader = ShardReader(config)
    result = classify(hostile.shards, lambda: (one_epoch(reader), events))
    assert not result["unhandled"], result["unhandled"]
    assert result["handled"] == result["tried"] == len(hostile.cases) + 1
    assert not result["lost"] and not result["unexpected"], result
    # the budget's own account: by reason, and every message names the shard and the key
    expected = Counter(case.reason for case in hostile.cases) + Counter(["corrupt_tar"])
    assert reader.budget.by_reason == dict(sorted(expected.items()))
    for message in reader.budget.examples:
        assert ".tar" in message and "(skipped; " in message, message
    keyed = [c for c in hostile.cases if c.key and c.key != "../escape"][:5]
    assert any(f".tar:{case.key}:" in m for case in keyed for m in reader.budget.examples)


def test_the_cli_reports_hostile_shards_without_running_anything(
    hostile: Hostile, capsys: pytest.CaptureFixture[str]
) -> None:
    from mmpretrain.cli import main

    pattern = str(hostile.shards.directory / "shard-*.tar")
    assert main(["data", "stats", pattern, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    expected = Counter(case.reason for case in hostile.cases) + Counter(["corrupt_tar"])
    assert stats["errors_by_reason"] == dict(sorted(expected.items()))
    assert stats["samples"] == len(hostile.shards.good_keys)
    assert main(["data", "inspect", pattern, "--limit", "100"]) == 0
    assert "SECRET" not in capsys.readouterr().out


def test_text_shard_sources_skip_hostile_samples(hostile: Hostile) -> None:
    skips = SkipCounter(max_skips=None, name="hostile")
    documents = list(iter_documents(ShardsSource(paths=[str(hostile.shards.directory)]), skips))
    texts = {d.text for d in documents}
    assert "SECRET" not in texts and not any("PWNED" in t for t in texts)
    text_only = [k for k in hostile.shards.good_keys if k.startswith("cut") or int(k[4:]) % 3]
    assert len(documents) == len(text_only)
    assert skips.by_reason["unsafe_member"] == sum(c.reason == "unsafe_member" for c in hostile.cases)


def test_training_on_hostile_text_shards_runs_nothing(hostile: Hostile, tmp_path: Path) -> None:
    from reliability_helpers import corpus_documents

    from mmpretrain.data.tokenizer import train_bpe

    tokenizer = tmp_path / "tokenizer"
    train_bpe(corpus_documents(60), vocab_size=300).save(tokenizer)
    config = tiny_run_config(hostile.shards.directory, tokenizer, train={"max_steps": 3, "save_every": 3})
    config["data"]["max_skips"] = 1000
    code, output = run_quietly(train_argv(write_yaml(tmp_path / "run.yaml", config), tmp_path / "run"))
    assert code == 0, output


# ---------------------------------------------------------------------------- extraction


def test_the_project_extracts_no_archive_and_uses_no_webdataset_decoder() -> None:
    offenders = []
    for directory in CODE_DIRS:
        for path in (REPO / directory).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
                if isinstance(node, ast.Attribute) and node.attr in (
                    "extractall",
                    "extract",
                    "unpack_archive",
                ):
                    offenders.append(f"{where}: .{node.attr} writes archive members to disk")
                module = (node.module or "") if isinstance(node, ast.ImportFrom) else ""
                if module.startswith("webdataset") and module != "webdataset.gopen":
                    offenders.append(f"{where}: from {node.module} import (webdataset decodes with pickle)")
                if isinstance(node, ast.Import) and any(a.name.startswith("webdataset") for a in node.names):
                    offenders.append(f"{where}: import webdataset (its default decoders unpickle)")
    assert not offenders, offenders


def test_zip_build_inputs_with_hostile_names_are_read_not_extracted(hostile: Hostile) -> None:
    from mmpretrain.data.build.interleaved import input_rows

    archive_path = hostile.root / "work" / "docs_shard_0_v2.jsonl.zip"
    line = json.dumps({"text_list": ["hello"], "image_info": []}) + "\n"
    with zipfile.ZipFile(archive_path, "w") as archive:
        archive.writestr("ok.jsonl", line)
        archive.writestr("../../zip_escape.jsonl", line)
        archive.writestr(str(hostile.outside / "zip_absolute.jsonl"), line)
        link = zipfile.ZipInfo("link.jsonl")
        link.external_attr = 0o120777 << 16  # a symlink entry, as `zip --symlinks` writes it
        archive.writestr(link, str(hostile.secret))
    rows = list(input_rows(archive_path))
    assert len(rows) >= 3
    assert "SECRET" not in json.dumps([r for r in rows if isinstance(r, tuple)])
    archive_path.unlink()
    assert not (hostile.root / "zip_escape.jsonl").exists()


# ---------------------------------------------------------------------------- bombs


def bomb_cases(hostile: Hostile) -> list[HostileCase]:
    return [case for case in hostile.cases if case.group == "bomb"]


def test_decompression_bombs_are_rejected_from_the_header_at_no_memory_cost(hostile: Hostile) -> None:
    cases = bomb_cases(hostile)
    assert len(cases) == 5
    with peak_rss_growth() as growth:
        for case in cases:
            name, data = case.members[1].name, case.members[1].data
            with pytest.raises(DecodeError) as error:
                decode_member(name.split(".", 1)[1], data)
            assert error.value.reason == case.reason, case.name
    # the PNG bomb alone would take 400 MB decoded; the 10-hour FLAC 2.3 GB as float32
    assert growth["mb"] < 64, growth


# ---------------------------------------------------------------------------- error budget


def mostly_broken_shards(directory: Path, good: int, bad: int) -> Path:
    """``good`` text samples and ``bad`` broken ones (invalid JSON, pickles, bad UTF-8)."""
    directory.mkdir(parents=True)
    members: list[Member] = []
    broken = [b'{"segments": [', b"\xff\xfe", b"cbuiltins\nopen\n(S'/nonexistent/PWNED'\nS'w'\ntR."]
    total = good + bad
    for i in range(total):
        if (i * good) // total != ((i + 1) * good) // total:  # spread evenly
            members.append(Member(f"s{i:05d}.json", text_json(f"good document number {i}")))
        else:
            members.append(Member(f"s{i:05d}.json", broken[i % len(broken)]))
    for start in range(0, len(members), 50):
        write_raw_tar(directory / f"shard-{start // 50:06d}.tar", members[start : start + 50])
    return directory


def test_the_error_budget_stops_a_mostly_broken_dataset(hostile: Hostile, tmp_path: Path) -> None:
    shards = mostly_broken_shards(tmp_path / "broken", good=30, bad=170)
    reader = ShardReader(ReaderConfig(shards=[str(shards)], shuffle_buffer=10))
    with pytest.raises(DataFormatError) as error:
        list(islice(reader.samples(), 1000))
    message = str(error.value)
    assert "too many bad samples" in message and "worst shard" in message and "\n" not in message
    assert reader.budget.errors + reader.budget.good <= 120  # stopped early, not after the data


def test_training_on_mostly_broken_data_stops_with_one_line(hostile: Hostile, tmp_path: Path) -> None:
    from reliability_helpers import corpus_documents

    from mmpretrain.data.tokenizer import train_bpe

    shards = mostly_broken_shards(tmp_path / "broken", good=30, bad=170)
    tokenizer = tmp_path / "tokenizer"
    train_bpe(corpus_documents(60), vocab_size=300).save(tokenizer)
    config = write_yaml(tmp_path / "run.yaml", tiny_run_config(shards, tokenizer, train={"max_steps": 50}))
    code, output = run_quietly(train_argv(config, tmp_path / "run"))
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in output, output
    assert "too many bad records" in errors[0] and ".tar:s0" in errors[0], errors
    assert not (tmp_path / "run").exists()  # nothing trained: no half-made run directory


def test_deeply_nested_json_in_build_inputs_is_a_skip_not_a_crash(hostile: Hostile, tmp_path: Path) -> None:
    """A JSON line nested 100,000 deep made json.loads raise RecursionError (an internal
    error that ended the build); the build parsers now skip it like any invalid line."""
    from mmpretrain.data.build.asr import _manifest_entries
    from mmpretrain.data.build.captions import jsonl_objects, read_json
    from mmpretrain.data.build.interleaved import input_rows
    from mmpretrain.data.build.records import RecordSkip

    deep = "[" * 100_000 + "]" * 100_000
    good = json.dumps({"text": "fine", "caption": "fine", "audio_filepath": "a.flac", "duration": 1.0})
    lines = tmp_path / "input.jsonl"
    lines.write_text(f"{good}\n{deep}\n{good}\n", encoding="utf-8")
    parsed = [list(input_rows(lines)), list(jsonl_objects(lines)), list(_manifest_entries(lines, "input"))]
    for rows in parsed:
        skips = [r for r in rows if isinstance(r, RecordSkip)]
        assert len(rows) == 3 and len(skips) == 1 and "nested too deeply" in str(skips[0]), rows
    whole = tmp_path / "whole.json"
    whole.write_text(deep, encoding="utf-8")
    with pytest.raises(DataFormatError, match="nested too deeply"):
        read_json(whole)
