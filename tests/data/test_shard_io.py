"""Shard tar I/O: writer -> reader round trips, deterministic bytes, hostile tars skipped."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from mmpretrain.data.shard_io import ShardWriter, iter_shard_samples, sample_to_members
from mmpretrain.data.skips import SkipCounter
from mmpretrain.data.types import Sample, Segment
from mmpretrain.errors import DataFormatError


def text_sample(key: str, text: str = "hello world", source: str = "web") -> Sample:
    return Sample(key=key, source=source, segments=[Segment("text", text=text)])


def media_sample(key: str) -> Sample:
    return Sample(
        key=key,
        source="obelics",
        meta={"url": "https://example.com", "license": "cc-by"},
        segments=[
            Segment("text", text="A cat:"),
            Segment("image", data=b"\xff\xd8fake-jpeg" * 50, member="7.jpg", meta={"width": 4}),
            Segment("text", text="and what it said:"),
            Segment("audio", data=b"fLaC" + bytes(range(256)), meta={"ext": "flac"}, text="meow"),
        ],
    )


def write(out: Path, samples: list[Sample], **kwargs: int) -> list[Path]:
    with ShardWriter(out, **kwargs) as writer:
        for sample in samples:
            writer.write(sample)
    return writer.shards


def read(path: Path, skips: SkipCounter | None = None, **kwargs: int) -> list[Sample]:
    return list(iter_shard_samples(path, skips if skips is not None else SkipCounter(), **kwargs))


def test_round_trip_text_and_media(tmp_path: Path) -> None:
    samples = [text_sample("doc/0"), media_sample("doc/1"), text_sample("doc/2", "ünïcode ✓")]
    (shard,) = write(tmp_path, samples)
    assert shard == tmp_path / "shard-000000.tar"
    skips = SkipCounter()
    back = read(shard, skips)
    assert skips.as_dict() == {"samples": 3, "skipped": 0, "errors_by_reason": {}}
    assert [s.key for s in back] == ["doc/0", "doc/1", "doc/2"]
    assert back[0] == samples[0]
    assert back[2].segments[0].text == "ünïcode ✓"
    got = back[1]
    assert got.source == "obelics" and got.meta == samples[1].meta
    assert [(s.kind, s.text, s.data, s.meta) for s in got.segments] == [
        (s.kind, s.text, s.data, s.meta) for s in samples[1].segments
    ]
    # media members are renamed by segment index
    assert [s.member for s in got.segments] == [None, "1.jpg", None, "3.flac"]


def test_member_layout_and_headers_are_deterministic(tmp_path: Path) -> None:
    samples = [media_sample("a"), text_sample("b")]
    (first,) = write(tmp_path / "one", samples)
    (second,) = write(tmp_path / "two", samples)
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["a.json", "a.1.jpg", "a.3.flac", "b.json"]
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.mode, m.uname, m.gname) == (0, 0, 0, 0o644, "", "")
        assert m.isreg()
    obj = json.loads(sample_to_members(samples[0])[0][1])
    assert obj["version"] == 1
    assert obj["segments"][1] == {"kind": "image", "member": "1.jpg", "meta": {"width": 4}}
    assert obj["segments"][3] == {
        "kind": "audio",
        "member": "3.flac",
        "text": "meow",
        "meta": {"ext": "flac"},
    }


def test_rolls_over_by_samples_and_bytes(tmp_path: Path) -> None:
    samples = [text_sample(f"k{i}") for i in range(5)]
    with ShardWriter(tmp_path / "n", prefix="part", max_samples=2) as writer:
        for sample in samples:
            writer.write(sample)
    assert [p.name for p in writer.shards] == ["part-000000.tar", "part-000001.tar", "part-000002.tar"]
    assert writer.samples_per_shard == [2, 2, 1]
    assert writer.num_samples == 5
    assert [s.key for p in writer.shards for s in read(p)] == [s.key for s in samples]
    # a text sample takes 1 KiB of tar blocks (json header + data), so 3 fit in 3 KiB
    with ShardWriter(tmp_path / "b", max_bytes=3 * 1024) as by_bytes:
        for sample in samples:
            by_bytes.write(sample)
    assert by_bytes.samples_per_shard == [3, 2]
    assert all(p.stat().st_size <= 3 * 1024 + 10240 for p in by_bytes.shards)  # + end blocks, record padding
    assert not list(tmp_path.rglob("*.tmp"))


def test_empty_writer_writes_nothing(tmp_path: Path) -> None:
    assert write(tmp_path, []) == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        (text_sample("a.b"), "contains '.'"),
        (text_sample("../up"), "'..'"),
        (text_sample("/abs"), "absolute"),
        (Sample("k", "", [Segment("image", data=b"x")]), "no file extension"),
        (Sample("k", "", [Segment("image", data=b"x", member="0.pyd")]), "not a valid image member"),
        (text_sample("k", text=""), "non-empty string"),
    ],
)
def test_writer_rejects_invalid_samples(tmp_path: Path, sample: Sample, message: str) -> None:
    with ShardWriter(tmp_path) as writer, pytest.raises(DataFormatError, match=message):
        writer.write(sample)
    assert writer.shards == []


def test_writer_rejects_duplicate_keys(tmp_path: Path) -> None:
    with ShardWriter(tmp_path) as writer:
        writer.write(text_sample("k"))
        with pytest.raises(DataFormatError, match="already written"):
            writer.write(text_sample("k"))
    assert [s.key for s in read(writer.shards[0])] == ["k"]


# ------------------------------------------------------------------------------ hostile tars


def add(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def good_json(text: str = "fine") -> bytes:
    return json.dumps({"segments": [{"kind": "text", "text": text}]}).encode()


def hostile_tar(path: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        add(tar, "good-a.json", good_json("a"))
        add(tar, "../evil.json", good_json())
        add(tar, "link.json", kind=tarfile.SYMTYPE)
        add(tar, "bad.json", b"{not json")
        add(tar, "pickle.json", json.dumps({"segments": [{"kind": "text", "text": "x"}]}).encode())
        add(tar, "pickle.0.pyd", b"cos\nsystem\n(S'echo pwned'\ntR.")
        add(tar, "dir/", kind=tarfile.DIRTYPE)
        add(tar, "good-b.json", good_json("b"))
    return path


def test_hostile_members_are_skipped_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shard = hostile_tar(tmp_path / "hostile.tar")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a reader that extracted ../evil.json would write into tmp_path
    before = sorted(tmp_path.rglob("*"))
    skips = SkipCounter()
    samples = read(shard, skips)
    assert [s.key for s in samples] == ["good-a", "good-b"]
    assert [s.segments[0].text for s in samples] == ["a", "b"]
    assert skips.by_reason == {"unsafe_member": 2, "bad_sample": 2}
    assert skips.good == 2
    text = "\n".join(skips.examples)
    assert f"{shard}:../evil: member '../evil.json' has an unsafe path" in text
    assert f"{shard}:link: member 'link.json' is a link" in text
    assert f"{shard}:bad: sample 'bad': bad.json is not valid JSON" in text
    assert f"{shard}:pickle:" in text and "pickle.0.pyd has an extension this format does not allow" in text
    assert sorted(tmp_path.rglob("*")) == before
    assert not (tmp_path / "evil.json").exists()


def test_skip_limit_applies_to_hostile_tar(tmp_path: Path) -> None:
    shard = hostile_tar(tmp_path / "hostile.tar")
    with pytest.raises(DataFormatError, match="too many bad records in shards: 2 skipped \\(limit 1\\)"):
        read(shard, SkipCounter(max_skips=1, name="shards"))


@pytest.mark.parametrize("extra", [0, 100, 512 + 7])  # at a block boundary (tarfile ends quietly) or not
def test_truncated_tar_keeps_what_was_read(tmp_path: Path, extra: int) -> None:
    samples = [media_sample(f"s{i}") for i in range(10)]
    (shard,) = write(tmp_path, samples)
    data = shard.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2 + extra])
    skips = SkipCounter()
    back = read(cut, skips)
    assert 0 < len(back) < 10
    assert [s.key for s in back] == [s.key for s in samples[: len(back)]]
    assert skips.by_reason == {"corrupt_tar": 1}
    assert skips.examples[0].startswith(f"{cut}: truncated or corrupt tar")


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
def test_compressed_shards_and_corrupt_compression(
    tmp_path: Path, compress: Callable[[bytes], bytes]
) -> None:
    samples = [text_sample(f"s{i}") for i in range(3)]
    (shard,) = write(tmp_path, samples)
    packed = tmp_path / "shard.tar.z"
    packed.write_bytes(compress(shard.read_bytes()))
    assert [s.key for s in read(packed)] == ["s0", "s1", "s2"]
    raw = packed.read_bytes()
    for name, damaged in [("cut", raw[: len(raw) // 2]), ("flipped", raw[:20] + b"\x00" * 40 + raw[60:])]:
        broken = tmp_path / f"{name}.tar.z"
        broken.write_bytes(damaged)
        skips = SkipCounter()
        read(broken, skips)
        assert skips.by_reason == {"corrupt_tar": 1}, name


def test_not_a_tar(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar archive" * 100)
    skips = SkipCounter()
    assert read(junk, skips) == []
    assert skips.by_reason == {"corrupt_tar": 1}


def test_member_size_limit(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "big.tar", "w") as tar:
        add(tar, "big.json", json.dumps({"segments": [{"kind": "image", "member": "0.png"}]}).encode())
        add(tar, "big.0.png", b"\x89PNG" + b"\x00" * 5000)
        add(tar, "small.json", good_json())
    skips = SkipCounter()
    samples = read(tmp_path / "big.tar", skips, max_member_bytes=1000)
    assert [s.key for s in samples] == ["small"]
    assert skips.by_reason == {"member_too_large": 1}
    assert "'big.0.png' has 5004 bytes (limit 1000)" in skips.examples[0]


def test_missing_member_and_duplicate_key(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "odd.tar", "w") as tar:
        add(tar, "a.json", json.dumps({"segments": [{"kind": "image", "member": "0.jpg"}]}).encode())
        add(tar, "b.0.jpg", b"jpeg")  # media without its json
        add(tar, "c.json", good_json())
        add(tar, "d.json", good_json())
        add(tar, "c.json", good_json())  # the key again, not contiguous
    skips = SkipCounter()
    assert [s.key for s in read(tmp_path / "odd.tar", skips)] == ["c", "d"]
    assert skips.by_reason == {"bad_sample": 2, "duplicate_key": 1}
    assert "'0.jpg' is not a member of the sample" in skips.examples[0]
    assert "has no b.json member (members: 0.jpg)" in skips.examples[1]


def test_missing_shard(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"shard not found: .*nope\.tar"):
        read(tmp_path / "nope.tar")
    with pytest.raises(DataFormatError, match="is a directory"):
        read(tmp_path)


def test_next_shard_starts_a_new_shard(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, max_samples=100) as writer:
        writer.next_shard()  # nothing written yet: no empty shard
        for i in range(5):
            if i in (2, 3):
                writer.next_shard()
            writer.write(Sample(key=f"k{i}", source="t", segments=[Segment(kind="text", text="x")]))
    assert writer.samples_per_shard == [2, 1, 2]
