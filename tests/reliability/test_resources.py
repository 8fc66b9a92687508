"""Resource limits: the reader and the packer hold a bounded amount of memory under a shard
of huge samples; a data worker that dies is restarted at the exact position (and, dying
again and again, stops the run with one clear error); a stalled worker times out instead
of hanging the run."""

from __future__ import annotations

import io
import logging
import os
import signal
import tarfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from reliability_helpers import corpus_documents, deadline, peak_rss_growth, write_text_shards

from mmpretrain.data import reader as reader_module
from mmpretrain.data.media_pipeline import MediaBatchStream, MediaDataConfig, StandInImageProcessor
from mmpretrain.data.reader import MAX_WORKER_RESTARTS, ReaderConfig, ShardReader
from mmpretrain.data.shard_io import MAX_MEMBER_BYTES, ShardWriter
from mmpretrain.data.tokenizer import train_bpe
from mmpretrain.data.types import Sample, Segment
from mmpretrain.errors import UserError

HUGE_SAMPLES = 30
IMAGE_SIDE = 900  # an incompressible 900x900 RGB PNG: 2.4 MB raw, 2.4 MB decoded


@pytest.fixture(scope="module")
def huge_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """One shard of HUGE_SAMPLES samples, each an incompressible image; returns its
    directory and its size in MB."""
    out = tmp_path_factory.mktemp("huge")
    pixels = np.random.default_rng(0).integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=0)  # every sample holds its own copy
    with ShardWriter(out, max_samples=HUGE_SAMPLES, max_bytes=2**40) as writer:
        for i in range(HUGE_SAMPLES):
            segments = [
                Segment("text", text=f"picture {i}"),
                Segment("image", data=buffer.getvalue(), member="1.png"),
            ]
            writer.write(Sample(f"big{i:03d}", "huge", segments))
    (shard,) = writer.shards
    return out, shard.stat().st_size / 2**20


@pytest.mark.parametrize("shuffle_buffer", [0, 4])
def test_reader_memory_stays_bounded_under_huge_samples(
    huge_shards: tuple[Path, float], shuffle_buffer: int
) -> None:
    shards, shard_mb = huge_shards
    sample_mb = shard_mb / HUGE_SAMPLES
    reader = ShardReader(ReaderConfig(shards=[str(shards)], shuffle_buffer=shuffle_buffer))
    with peak_rss_growth() as growth:
        keys = [sample.key for sample, _ in islice(reader.samples(), HUGE_SAMPLES)]
    assert len(set(keys)) == HUGE_SAMPLES
    # a shuffle block of raw samples plus a few in flight; never the shard (72 MB)
    bound = (shuffle_buffer + 6) * 2 * sample_mb
    assert growth["mb"] < min(bound, shard_mb / 2), (growth, bound, shard_mb)


def test_packer_memory_stays_bounded_under_huge_samples(huge_shards: tuple[Path, float]) -> None:
    shards, shard_mb = huge_shards
    tokenizer = train_bpe(corpus_documents(40), vocab_size=300)
    cfg = MediaDataConfig(reader=ReaderConfig(shards=[str(shards)], shuffle_buffer=0), buffer_docs=24)
    processors: Any = {"image": StandInImageProcessor(size=32, patch=8)}

    def stream() -> MediaBatchStream:
        return MediaBatchStream(cfg, tokenizer, processors, seq_len=128, batch_size=2, seed=0)

    list(islice(stream().batches(), 1))  # warm-up: first-use allocations are not the packer's
    with peak_rss_growth() as growth:
        batches = list(islice(stream().batches(), 12))  # over two packing rounds of 24 documents
    assert sum(len(b.media["image"].spans) for b, _ in batches) >= 24
    # the packer holds preprocessed items (32x32), not a round of decoded 900x900 images
    # (24 x 2.4 MB raw + 24 x 2.4 MB decoded)
    assert growth["mb"] < shard_mb / 2, (growth, shard_mb)


def test_a_huge_member_is_skipped_without_being_read(tmp_path: Path) -> None:
    """A member over the member limit (here 80 MB, a sparse file) is skipped by its header:
    the reader's Python allocations stay small while the stream passes over it."""
    path = tmp_path / "shard-000000.tar"
    huge = MAX_MEMBER_BYTES + 16 * 2**20
    with open(path, "wb") as out:

        def add(name: str, data: bytes, size: int | None = None) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data) if size is None else size
            out.write(info.tobuf(tarfile.PAX_FORMAT))
            if size is None:
                out.write(data + b"\0" * (-len(data) % 512))
            else:  # a hole in the file: no disk space, zeros when read
                out.seek(size + (-size % 512), os.SEEK_CUR)

        add("a.json", b'{"segments": [{"kind": "image", "member": "0.png"}]}')
        add("a.0.png", b"", size=huge)
        add("b.json", b'{"segments": [{"kind": "text", "text": "after the huge one"}]}')
        out.write(b"\0" * 1024)
    reader = ShardReader(ReaderConfig(shards=[str(path)], shuffle_buffer=0, max_error_rate=1.0))
    tracemalloc.start()
    try:
        ((sample, _),) = list(islice(reader.samples(), 1))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sample.key == "b" and reader.budget.by_reason == {"member_too_large": 1}
    assert peak < 8 * 2**20, peak


@pytest.fixture
def text_reader_config(tmp_path: Path) -> ReaderConfig:
    write_text_shards(tmp_path / "shards", corpus_documents(120), per_shard=10)
    # worker_timeout is also how often the loader looks for dead workers when torch's
    # SIGCHLD handler cannot tell it (blocked here; see sigchld_blocked)
    return ReaderConfig(shards=[str(tmp_path / "shards")], shuffle_buffer=8, num_workers=2, worker_timeout=3)


def worker_pids(stream: Iterator[Any]) -> list[int]:
    """The worker processes behind a running ``ShardReader.samples()`` generator."""
    frame = stream.gi_frame  # type: ignore[attr-defined]
    assert frame is not None
    return [worker.pid for worker in frame.f_locals["items"]._workers]


@contextmanager
def sigchld_blocked() -> Iterator[None]:
    """Hold SIGCHLD back: torch's SIGCHLD handler would raise the worker's death wherever
    the test happens to be (in a training run: in the loop, and the CLI reports it in one
    line); blocked, the loader finds the dead worker itself when a wait for data times
    out, inside the reader, deterministically."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})


def test_a_dead_data_worker_is_restarted_at_the_exact_position(
    text_reader_config: ReaderConfig, caplog: pytest.LogCaptureFixture
) -> None:
    expected = [s.key for s, _ in islice(ShardReader(text_reader_config).samples(), 200)]
    stream = ShardReader(text_reader_config).samples()
    got: list[str] = []
    with deadline(120), sigchld_blocked(), caplog.at_level(logging.WARNING, "mmpretrain.data"):
        for sample, _ in stream:
            got.append(sample.key)
            if len(got) == 30:
                os.kill(worker_pids(stream)[1], signal.SIGKILL)  # as the OOM killer would
            if len(got) == 200:
                break
        stream.close()
    assert got == expected
    assert "restarting the data workers at the current position (1/3)" in caplog.text


@pytest.mark.slow
def test_data_workers_dying_again_and_again_stop_with_one_clear_error(
    text_reader_config: ReaderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader_module, "MAX_WORKER_RESTARTS", 1)
    stream = ShardReader(text_reader_config).samples()
    with deadline(120), sigchld_blocked(), pytest.raises(UserError) as error:
        for count, _ in enumerate(stream, 1):
            if count in (10, 40):
                os.kill(worker_pids(stream)[0], signal.SIGKILL)
    message = str(error.value)
    assert "data workers died 2 times" in message and "lower num_workers" in message
    assert "\n" not in message and MAX_WORKER_RESTARTS == 3


def test_a_stalled_data_worker_times_out_instead_of_hanging(
    text_reader_config: ReaderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_decode: Callable[..., Any] = reader_module.decode_sample

    def stall(sample: Any, limits: Any) -> Any:  # runs in the forked worker processes
        if sample.key.endswith("doc00050"):
            time.sleep(4)  # a pipe: command or network file system that stopped answering
        return real_decode(sample, limits)

    monkeypatch.setattr(reader_module, "decode_sample", stall)
    config = text_reader_config.model_copy(update={"worker_timeout": 2.0})
    started = time.monotonic()
    with deadline(60), pytest.raises(UserError) as error:
        for _ in ShardReader(config).samples():
            pass
    assert "no sample from a data worker in 2 s" in str(error.value)
    assert time.monotonic() - started < 30


def test_a_worker_death_raised_inside_the_training_loop_is_one_clear_line(
    write_config: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """torch's SIGCHLD handler raises a dead worker's RuntimeError wherever the main process
    is (mostly in the forward pass, outside the reader): the CLI turns it into one line."""
    from mmpretrain.cli import main
    from mmpretrain.train import loop as loop_module

    real = loop_module.token_loss_sum
    calls = {"n": 0}

    def dies_at_step_5(logits: Any, labels: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")
        return real(logits, labels)

    monkeypatch.setattr(loop_module, "token_loss_sum", dies_at_step_5)
    config = write_config(train={"max_steps": 8})
    assert main(["train", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: DataLoader worker (pid 4242) is killed"), err
    assert "continue with --resume" in err
