"""The build runner: parallel workers give the same shards, shards split by count and size,
images are shrunk, duplicates removed, bad media counted, too many bad records stop the build."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from build_helpers import build, read_back, write_audio, write_image
from PIL import Image

from mmpretrain.data.build import BuildOptions, RecordSegment, RecordSkip, SourceRecord, register_format
from mmpretrain.data.build.formats import RecordStream
from mmpretrain.errors import DataFormatError


@register_format("test-manifest", "test only: JSONL of {image?, audio?, text}", "")
def _parse_manifest(options: BuildOptions) -> RecordStream:
    """A minimal format for runner tests: one record per line of a JSONL manifest."""
    root = options.media_root("image")
    for n, line in enumerate(options.input.read_text().splitlines(), 1):
        where = f"{options.input.name}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            yield RecordSkip("invalid_json", where, "not JSON")
            continue
        segments = []
        if "image" in row:
            segments.append(RecordSegment("image", path=root / row["image"]))
        if "audio" in row:
            segments.append(RecordSegment("audio", path=root / row["audio"], text=row["text"]))
        segments.append(RecordSegment("text", text=row["text"]))
        yield SourceRecord(f"t/{n:06d}", where, tuple(segments), {"source": "test"})


def _manifest(tmp_path: Path, rows: list[dict | str]) -> Path:
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def _shard_hashes(out: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("shard-*.tar"))]


def test_workers_give_byte_identical_shards(tmp_path: Path) -> None:
    rows: list[dict | str] = []
    for i in range(12):
        write_image(tmp_path / f"img{i}.jpg", size=(40 + i, 30), seed=i)
        rows.append({"image": f"img{i}.jpg", "text": f"caption {i}"})
    rows.insert(5, "{broken")
    manifest = _manifest(tmp_path, rows)
    serial = build("test-manifest", tmp_path / "a", input=manifest, shard_samples=5)
    parallel = build("test-manifest", tmp_path / "b", input=manifest, shard_samples=5, workers=2)
    assert _shard_hashes(tmp_path / "a" / "out") == _shard_hashes(tmp_path / "b" / "out")
    assert [s["samples"] for s in serial["shards"]] == [5, 5, 2]
    assert serial["shards"] == parallel["shards"]
    assert serial["build"]["errors_by_reason"] == {"invalid_json": 1}
    assert serial["build"]["examples"][0].startswith("manifest.jsonl:6")


def test_shards_split_by_size(tmp_path: Path) -> None:
    rows = []
    for i in range(6):
        write_image(tmp_path / f"img{i}.png", size=(64, 64), seed=i, fmt="PNG")  # ~12 KB each
        rows.append({"image": f"img{i}.png", "text": f"caption {i}"})
    index = build("test-manifest", tmp_path, input=_manifest(tmp_path, rows), shard_bytes=30_000)
    tar_end = 10_240  # a tar file ends with zero blocks padded to its 10 KiB record size
    assert len(index["shards"]) >= 3 and all(s["bytes"] <= 30_000 + tar_end for s in index["shards"])
    assert index["samples"] == 6 and len(read_back(tmp_path / "out")) == 6


def test_images_shrunk_to_max_side_and_small_ones_kept_byte_exact(tmp_path: Path) -> None:
    small = write_image(tmp_path / "small.jpg", size=(50, 40), seed=1)
    write_image(tmp_path / "big.png", size=(300, 120), seed=2, fmt="PNG")
    rows = [{"image": "small.jpg", "text": "small"}, {"image": "big.png", "text": "big"}]
    build("test-manifest", tmp_path, input=_manifest(tmp_path, rows), max_image_side=100)
    kept, shrunk = read_back(tmp_path / "out")
    assert kept.segments[0].image is not None and kept.segments[0].image.size == (50, 40)
    assert shrunk.segments[0].image is not None and shrunk.segments[0].image.size == (100, 40)
    assert shrunk.segments[0].meta["width"] == 100
    with __import__("tarfile").open(next((tmp_path / "out").glob("shard-*.tar"))) as tar:
        stored = tar.extractfile("t/000001.0.jpg")
        assert stored is not None and stored.read() == small  # no re-encoding when nothing changes


def test_exact_duplicate_media_removed_and_counted(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg", seed=3)
    (tmp_path / "copy.jpg").write_bytes((tmp_path / "a.jpg").read_bytes())
    rows = [{"image": "a.jpg", "text": "first"}, {"image": "copy.jpg", "text": "second"}]
    manifest = _manifest(tmp_path, rows)
    index = build("test-manifest", tmp_path, input=manifest)
    assert index["samples"] == 1 and index["build"]["duplicates_removed"]["media_samples"] == 1
    assert index["build"]["errors_by_reason"] == {"duplicate_media": 1}
    kept = build("test-manifest", tmp_path / "k", input=manifest, dedup_media=False)
    assert kept["samples"] == 2


def test_missing_corrupt_and_huge_media_are_skipped_with_place(tmp_path: Path) -> None:
    write_image(tmp_path / "ok.jpg", seed=4)
    (tmp_path / "corrupt.jpg").write_bytes((tmp_path / "ok.jpg").read_bytes()[:200])
    (tmp_path / "noise.wav").write_bytes(b"RIFF not really a wav")
    write_audio(tmp_path / "ok.wav", seconds=0.3)
    rows = [
        {"image": "ok.jpg", "text": "fine"},
        {"image": "missing.jpg", "text": "gone"},
        {"image": "corrupt.jpg", "text": "cut"},
        {"audio": "noise.wav", "text": "bad audio"},
        {"audio": "ok.wav", "text": "good audio"},
    ]
    index = build("test-manifest", tmp_path, input=_manifest(tmp_path, rows))
    assert index["samples"] == 2
    assert index["build"]["errors_by_reason"] == {"bad_audio": 1, "bad_image": 1, "missing_image": 1}
    examples = "\n".join(index["build"]["examples"])
    assert "manifest.jsonl:2" in examples and "missing.jpg" in examples and "manifest.jsonl:4" in examples
    audio = read_back(tmp_path / "out")[1].segments[0]
    assert audio.sample_rate == 16000 and audio.audio is not None
    assert abs(len(audio.audio) / 16000 - 0.3) < 0.01 and audio.text == "good audio"


def test_too_many_bad_records_stop_the_build_with_a_clear_error(tmp_path: Path) -> None:
    rows = ["{bad"] * 150 + [{"text": "only good one"}]
    with pytest.raises(DataFormatError, match="too many bad records"):
        build("test-manifest", tmp_path, input=_manifest(tmp_path, rows), max_skip_fraction=0.5)


def test_index_counts_match_the_shards(tmp_path: Path) -> None:
    for i in range(3):
        write_image(tmp_path / f"i{i}.jpg", seed=10 + i)
    write_audio(tmp_path / "a.flac", seconds=0.5)
    rows = [{"image": f"i{i}.jpg", "text": "x" * 40} for i in range(3)] + [
        {"audio": "a.flac", "text": "hello"}
    ]
    index = build("test-manifest", tmp_path, input=_manifest(tmp_path, rows), limit=4)
    assert (index["samples"], index["images"], index["audio"]) == (4, 3, 1)
    assert index["audio_seconds"] == pytest.approx(0.5, abs=0.01)
    assert index["build"]["records"] == 4 and index["build"]["kept"] == 4
    on_disk = json.loads((tmp_path / "out" / "index.json").read_text())
    assert on_disk == index
    image = Image.open(io.BytesIO((tmp_path / "i0.jpg").read_bytes()))
    assert read_back(tmp_path / "out")[0].segments[0].image.size == image.size  # type: ignore[union-attr]


@register_format("test-speak", "test only: one spoken sentence per line", "")
def _parse_speak(options: BuildOptions) -> RecordStream:
    """Each line becomes a record whose audio is synthesized from it."""
    for n, line in enumerate(options.input.read_text().splitlines(), 1):
        segment = RecordSegment("audio", speak=line, text=line)
        yield SourceRecord(f"s/{n:06d}", f"{options.input.name}:{n}", (segment,), {"source": "test"})


def test_synthesized_speech_is_never_dropped_as_duplicate(tmp_path: Path) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("Exeunt.\nExeunt.\n")  # identical text: identical clips
    index = build("test-speak", tmp_path, input=lines)
    assert index["samples"] == 2 and index["build"]["skipped"] == 0
    assert [s.segments[0].text for s in read_back(tmp_path / "out")] == ["Exeunt.", "Exeunt."]
