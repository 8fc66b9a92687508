"""Streaming shard reader: exact resume, rank/worker split, shuffling, hostile shards, budget."""

from __future__ import annotations

import io
import json
import shlex
import struct
import tarfile
import time
import zlib
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmpretrain.data.decoders import DecodeError, DecodeLimits, decode_audio, decode_image, decode_member
from mmpretrain.data.error_budget import ErrorBudget, SkipEvent
from mmpretrain.data.reader import ReaderConfig, ReaderState, ShardReader, reader_stats
from mmpretrain.data.shard_io import ShardWriter
from mmpretrain.data.types import Sample, Segment
from mmpretrain.errors import DataFormatError

# ------------------------------------------------------------------------------ helpers


def png_bytes(
    size: tuple[int, int] = (4, 3), color: tuple[int, ...] = (200, 10, 10), mode: str = "RGB"
) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def flac_bytes(seconds: float = 0.02, rate: int = 8000, channels: int = 1) -> bytes:
    frames = int(seconds * rate)
    wave = np.sin(np.arange(frames * channels, dtype=np.float32) / 7).reshape(frames, channels) * 0.5
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="FLAC")
    return buf.getvalue()


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 1-bit PNG of width x height zeros: ~50 KB that would decode to 400 Mpx."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = (b"\x00" * (1 + (width + 7) // 8)) * height
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(rows, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def text_sample(key: str) -> Sample:
    return Sample(key, "test", [Segment("text", text=f"document {key}")])


def media_sample(key: str, image: bytes | None = None, audio: bytes | None = None) -> Sample:
    return Sample(
        key,
        "test",
        [
            Segment("text", text=f"look at {key}:"),
            Segment("image", data=image if image is not None else png_bytes(), member="1.png"),
            Segment("audio", data=audio if audio is not None else flac_bytes(), member="2.flac", text="hi"),
        ],
    )


def write_shards(out: Path, samples: list[Sample], per_shard: int) -> list[Path]:
    with ShardWriter(out, max_samples=per_shard) as writer:
        for sample in samples:
            writer.write(sample)
    return writer.shards


def raw_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar written member by member, bypassing ShardWriter's validation."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sample_json(*segments: dict[str, str]) -> bytes:
    return json.dumps({"segments": list(segments)}).encode()


def take(reader: ShardReader, n: int, state: ReaderState | None = None) -> list[tuple[str, ReaderState]]:
    return [(sample.key, after) for sample, after in islice(reader.samples(state), n)]


def first_epochs(reader: ShardReader, epochs: int) -> Iterator[str]:
    """Keys until every worker has moved past ``epochs`` epochs."""
    for sample, state in reader.samples():
        yield sample.key
        if min(state.positions) >= epochs * reader.samples_per_epoch:
            return


@pytest.fixture
def clean_shards(tmp_path: Path) -> Path:
    """21 samples in 3 shards of 7; every third one carries an image and an audio clip."""
    out = tmp_path / "clean"
    samples = [media_sample(f"s{i:02d}") if i % 3 == 0 else text_sample(f"s{i:02d}") for i in range(21)]
    write_shards(out, samples, per_shard=7)
    return out


# ------------------------------------------------------------------------------ decoders


def test_decoders_give_rgb_images_and_mono_audio() -> None:
    image = decode_image(png_bytes(mode="RGBA", color=(0, 0, 255, 0)))
    assert image.mode == "RGB" and image.size == (4, 3)
    assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent -> composited on white
    audio, rate = decode_audio(flac_bytes(seconds=0.25, rate=8000, channels=2))
    assert rate == 8000 and audio.dtype == np.float32 and audio.shape == (2000,)


def test_decoders_reject_bombs_truncation_and_unknown_extensions(tmp_path: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(DecodeError) as bomb:
        decode_image(bomb_png())
    assert bomb.value.reason == "image_too_large" and time.perf_counter() - start < 1.0
    with pytest.raises(DecodeError) as large:
        decode_image(png_bytes(size=(100, 100)), max_pixels=99 * 100)
    assert large.value.reason == "image_too_large" and "100x100" in str(large.value)
    noise = Image.frombytes("RGB", (64, 64), np.random.default_rng(0).bytes(64 * 64 * 3))
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    for broken in (buf.getvalue()[: len(buf.getvalue()) * 2 // 3], b"\x89PNG\r\n\x1a\ngarbage"):
        with pytest.raises(DecodeError) as bad:
            decode_image(broken)
        assert bad.value.reason == "bad_image"
    with pytest.raises(DecodeError) as too_long:
        decode_audio(flac_bytes(seconds=2.0), max_seconds=1.0)
    assert too_long.value.reason == "audio_too_long"
    for broken in (b"fLaC" + b"\x00" * 64, flac_bytes(seconds=1.0)[:300]):
        with pytest.raises(DecodeError) as bad:
            decode_audio(broken)
        assert bad.value.reason == "bad_audio"
    marker = tmp_path / "pwned"
    with pytest.raises(DecodeError, match="never decoded"):
        decode_member("0.pickle", pickle_payload(marker))
    assert not marker.exists()


# ------------------------------------------------------------------------------ order and state


def test_resume_is_exact_in_process_across_epochs(clean_shards: Path) -> None:
    config = ReaderConfig(shards=[str(clean_shards)], shuffle_buffer=5)
    reader = ShardReader(config, seed=3)
    assert reader.samples_per_epoch == 21
    full = take(reader, 60)
    for k in (0, 6, 20, 21, 40):  # 20/21: the state after an epoch's last sample
        state = ReaderState.from_dict(json.loads(json.dumps(full[k][1].as_dict())))
        assert [key for key, _ in take(reader, 12, state)] == [key for key, _ in full[k + 1 : k + 13]]
    # every epoch is a permutation of the data, reshuffled each epoch
    epochs = [[key for key, _ in full[e * 21 : (e + 1) * 21]] for e in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == [f"s{i:02d}" for i in range(21)]
    assert epochs[0] != epochs[1]
    assert full[20][1].epoch == 1 and full[19][1].epoch == 0


def test_shuffle_is_deterministic_per_seed(clean_shards: Path) -> None:
    config = ReaderConfig(shards=[str(clean_shards)], shuffle_buffer=8)
    first = [key for key, _ in take(ShardReader(config, seed=1), 21)]
    assert first == [key for key, _ in take(ShardReader(config, seed=1), 21)]
    assert first != [key for key, _ in take(ShardReader(config, seed=2), 21)]
    in_order = ReaderConfig(shards=[str(clean_shards)], shuffle_buffer=0)
    assert [key for key, _ in take(ShardReader(in_order), 21)] == [f"s{i:02d}" for i in range(21)]


def test_resume_is_exact_with_prefetching_workers(tmp_path: Path) -> None:
    # Bad samples make workers skip unevenly (and send sample-less items at block ends).
    samples = [
        media_sample(f"w{i:02d}", image=b"not a png") if i in (4, 9, 10, 11) else text_sample(f"w{i:02d}")
        for i in range(21)
    ]
    write_shards(tmp_path, samples, per_shard=7)
    config = ReaderConfig(shards=[str(tmp_path)], shuffle_buffer=6, num_workers=2, max_error_rate=1.0)
    reader = ShardReader(config, seed=5)
    full = take(reader, 50)
    assert {key for key, _ in full} == {f"w{i:02d}" for i in range(21)} - {"w04", "w09", "w10", "w11"}
    assert reader.budget.by_reason == {"bad_image": 4}  # each counted once, over 3 epochs
    assert len(full[0][1].positions) == 2
    # a state where the two workers are in different epochs, and one with worker 1 next
    straddle = next(k for k, (_, st) in enumerate(full) if len({p // 21 for p in st.positions}) == 2)
    odd = next(k for k, (_, st) in enumerate(full) if k > 5 and st.next_worker == 1)
    for k in (odd, straddle):
        assert [key for key, _ in take(reader, 15, full[k][1])] == [key for key, _ in full[k + 1 : k + 16]]


def test_workers_keep_the_single_process_order_on_clean_data(clean_shards: Path) -> None:
    in_process = ReaderConfig(shards=[str(clean_shards)], shuffle_buffer=5)
    workers = in_process.model_copy(update={"num_workers": 2})
    expected = [key for key, _ in take(ShardReader(in_process, seed=7), 30)]
    assert [key for key, _ in take(ShardReader(workers, seed=7), 30)] == expected


def test_ranks_see_disjoint_samples_covering_the_epoch(clean_shards: Path) -> None:
    config = ReaderConfig(shards=[str(clean_shards)], shuffle_buffer=4)
    rank0 = [key for key, _ in take(ShardReader(config, rank=0, world_size=2), 11)]
    rank1 = [key for key, _ in take(ShardReader(config, rank=1, world_size=2), 10)]
    assert not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == [f"s{i:02d}" for i in range(21)]


def test_fewer_shards_than_ranks_times_workers(tmp_path: Path) -> None:
    write_shards(tmp_path, [text_sample(f"f{i}") for i in range(3)], per_shard=1)  # 3 shards, 3 samples
    config = ReaderConfig(shards=[str(tmp_path)], shuffle_buffer=0, num_workers=2)
    seen: set[str] = set()
    for rank in (0, 1):
        reader = ShardReader(config, rank=rank, world_size=2)
        items = take(reader, 4)
        seen.update(key for key, _ in items)
        start = reader.initial_state().positions
        assert all(after > before for after, before in zip(items[-1][1].positions, start, strict=True))
    assert seen == {"f0", "f1", "f2"}


def test_resume_with_another_layout_continues_from_the_smallest_position(clean_shards: Path) -> None:
    config = ReaderConfig(shards=[str(clean_shards)], shuffle_buffer=0)
    items = take(ShardReader(config), 10)
    state = items[9][1]
    assert state.positions == (10,)
    rank1 = ShardReader(config, rank=1, world_size=2)
    assert [key for key, _ in take(rank1, 3, state)] == ["s11", "s13", "s15"]
    assert [key for key, _ in take(rank1, 2, ReaderState.starting_at(4))] == ["s05", "s07"]
    with pytest.raises(DataFormatError, match="malformed"):
        ReaderState.from_dict({"epoch": 0})


# ------------------------------------------------------------------------------ hostile shards


def pickle_payload(marker: Path) -> bytes:
    """Protocol-0 pickle bytes that would create ``marker`` if anything unpickled them."""
    return b"cbuiltins\nopen\n(S'" + str(marker).encode() + b"'\nS'w'\ntR."


@pytest.fixture
def hostile_shards(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "hostile"
    out.mkdir()
    marker = tmp_path / "pwned"
    text = {"kind": "text", "text": "fine text"}
    raw_tar(
        out / "a-000000.tar",
        [
            ("good/0.json", sample_json(text)),
            ("img/0.json", sample_json(text, {"kind": "image", "member": "1.png"})),
            ("img/0.1.png", b"\x89PNG\r\n\x1a\nthis is not an image"),
            ("aud/0.json", sample_json({"kind": "audio", "member": "0.flac"})),
            ("aud/0.0.flac", b"fLaC" + bytes(100)),
            ("empty/0.json", sample_json({"kind": "text", "text": ""})),
            ("blank/0.json", sample_json({"kind": "text", "text": "  \n "})),
            ("pickled/0.json", sample_json(text)),
            ("pickled/0.pickle", pickle_payload(marker)),
            ("pyd/0.json", sample_json(text)),
            ("pyd/0.pyd", pickle_payload(marker)),
            ("../evil.json", sample_json(text)),
            ("bomb/0.json", sample_json({"kind": "image", "member": "0.png"})),
            ("bomb/0.0.png", bomb_png()),
            ("long/0.json", sample_json({"kind": "audio", "member": "0.flac"})),
            ("long/0.0.flac", flac_bytes(seconds=2.0)),
            ("good/1.json", sample_json(text, {"kind": "image", "member": "1.png"})),
            ("good/1.1.png", png_bytes()),
        ],
    )
    # A shard cut in the middle of its third sample: the first two still count.
    (whole,) = write_shards(tmp_path / "full", [text_sample(f"cut/{i}") for i in range(4)], per_shard=4)
    with tarfile.open(whole) as tar:
        cut_at = tar.getmembers()[2].offset_data + 10
    (out / "b-000000.tar").write_bytes(whole.read_bytes()[:cut_at])
    return out, marker


HOSTILE_REASONS = {
    "audio_too_long": 1,
    "bad_audio": 1,
    "bad_image": 1,
    "bad_sample": 3,  # "" text (schema), .pickle and .pyd members
    "corrupt_tar": 1,
    "empty_text": 1,
    "image_too_large": 1,
    "unsafe_member": 1,
}
HOSTILE_GOOD = {"good/0", "good/1", "cut/0", "cut/1"}


def test_hostile_shards_are_skipped_and_counted_once(hostile_shards: tuple[Path, Path]) -> None:
    out, marker = hostile_shards
    config = ReaderConfig(
        shards=[str(out)], shuffle_buffer=3, max_errors=100, max_error_rate=1.0, max_audio_seconds=1.0
    )
    reader = ShardReader(config)
    assert reader.counts == [11, 3]  # bad samples (and the break) keep their place in the order
    keys = list(first_epochs(reader, 2))
    assert sorted(keys) == sorted([*HOSTILE_GOOD, *HOSTILE_GOOD])
    assert reader.budget.by_reason == HOSTILE_REASONS
    assert reader.budget.by_shard[str(out / "b-000000.tar")] == {"corrupt_tar": 1}
    assert not marker.exists()

    stats = reader_stats(str(out), DecodeLimits(max_audio_seconds=1.0))
    assert stats["samples"] == 4 and stats["skipped"] == 10 and stats["shards"] == 2
    assert stats["errors_by_reason"] == HOSTILE_REASONS
    assert stats["images"] == 1 and stats["text_chars"] == len("fine text") * 2 + 2 * len("document cut/0")
    assert not marker.exists()


def test_error_budget_stops_the_run_naming_the_worst_shard(tmp_path: Path) -> None:
    write_shards(tmp_path / "ok", [text_sample(f"ok{i}") for i in range(10)], per_shard=10)
    bad = [media_sample(f"bad{i}", image=b"broken") for i in range(6)]
    write_shards(tmp_path / "bad", bad, per_shard=10)
    config = ReaderConfig(
        shards=[str(tmp_path / "ok"), str(tmp_path / "bad")], shuffle_buffer=4, max_errors=3
    )
    with pytest.raises(DataFormatError) as exc:
        list(islice(ShardReader(config).samples(), 100))
    message = str(exc.value)
    assert "too many bad samples: 4 skipped (limit 3)" in message
    assert f"worst shard {tmp_path / 'bad' / 'shard-000000.tar'} (4 errors: bad_image 4)" in message
    assert "data.shards.reader.max_errors" in message


def test_error_budget_rate_over_the_window() -> None:
    budget = ErrorBudget(max_errors=1000, max_error_rate=0.05)
    bad = SkipEvent("data/shard-000003.tar", "k", "bad_image", "broken")
    budget.record([bad, bad], good=0)  # the same (shard, key) counts once
    assert budget.errors == 1
    budget.record([SkipEvent("data/shard-000003.tar", f"k{i}", "bad_image") for i in range(4)], good=90)
    with pytest.raises(DataFormatError) as exc:
        budget.record([SkipEvent("data/shard-000003.tar", "", "corrupt_tar")], good=5)
    assert str(exc.value).startswith(
        "too many bad samples: 6 in the last 101 (limit 5%); worst shard data/shard-000003.tar "
        "(6 errors: bad_image 5, corrupt_tar 1)"
    )


def test_index_json_counts_and_mismatch(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, [text_sample(f"i{i}") for i in range(6)], per_shard=3)
    entries = [{"path": shards[0].name, "samples": 3}, {"file": shards[1].name, "samples": 4}]
    (tmp_path / "index.json").write_text(json.dumps({"shards": entries}))
    config = ReaderConfig(shards=[str(tmp_path)], shuffle_buffer=0, max_error_rate=1.0)
    reader = ShardReader(config)
    assert reader.counts == [3, 4]
    # the missing 7th sample is one skip, met once the reader gets past it
    assert [key for key, _ in take(reader, 7)] == ["i0", "i1", "i2", "i3", "i4", "i5", "i0"]
    assert reader.budget.by_reason == {"index_mismatch": 1}


# ------------------------------------------------------------------------------ shard lists


def test_brace_patterns_and_pipe_urls(clean_shards: Path, tmp_path: Path) -> None:
    braces = ReaderConfig(shards=[f"{clean_shards}/shard-{{000000..000002}}.tar"], shuffle_buffer=0)
    reader = ShardReader(braces)
    assert reader.shards == [str(clean_shards / f"shard-{i:06d}.tar") for i in range(3)]
    expected = [key for key, _ in take(reader, 21)]
    paths = [shlex.quote(shard) for shard in reader.shards]
    pipes = [f"pipe:cat {paths[0]}", f"pipe:gzip -c {paths[1]}", f"pipe:cat {paths[2]}"]
    piped = ShardReader(ReaderConfig(shards=pipes, shuffle_buffer=0))
    assert piped.shards == pipes  # URLs keep their given order
    assert [key for key, _ in take(piped, 21)] == expected
    with pytest.raises(DataFormatError, match="exit status"):
        ShardReader(ReaderConfig(shards=[f"pipe:cat {tmp_path}/missing.tar 2>/dev/null"]))
    with pytest.raises(DataFormatError, match="matches no files"):
        ShardReader(ReaderConfig(shards=[f"{tmp_path}/nothing-*.tar"]))
