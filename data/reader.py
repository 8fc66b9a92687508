"""Streaming shard reader with an exact, resumable position (DESIGN.md section 2).

Order. The shards (paths, globs, brace patterns such as ``data/shard-{000000..000003}.tar``,
directories, and ``pipe:COMMAND`` / other webdataset URLs for object stores) are expanded;
local shards are sorted, URLs follow in the order given. Samples are in tar order. The
*global index* of a sample is its place in that order; an epoch holds ``N`` samples (per-shard
counts come from ``index.json`` next to the shards, or from one counting pass).

Shuffle. Each epoch's order is cut into blocks of ``shuffle_buffer`` samples and each block
is permuted by ``random.Random(sha256(seed, epoch, block))``: seeded, different every
epoch, bounded memory, and every position is a pure function of (seed, epoch, index).
(webdataset's shuffle buffer cannot be resumed exactly: its content depends on everything
read before.) Position ``P = epoch * N + q`` counts the shuffled stream across epochs.

Split. Position ``P`` belongs to rank ``P % world_size`` and, within the rank, to worker
``(P // world_size) % num_workers``: a split by sample, so fewer shards (or samples) than
ranks x workers still works. Positions run across epochs, so every worker gets data even
when ``N`` is smaller than ranks x workers. Every worker reads the whole stream but parses
and decodes only its own samples. (The cost: each worker reads all shard bytes.)

State. A :class:`ReaderState` holds, per worker, the next position it will produce, and
which worker's item comes next. Workers send each item with their next position; the
main process merges them in DataLoader's fixed round-robin order, so the state yielded with
sample ``k`` is exactly "after sample ``k``", however far workers have prefetched. Resuming
with it (same config, rank and world size) continues exactly where the uninterrupted run
would be. With another layout the reader restarts every worker at the smallest saved
position: no sample is lost, some are repeated, and the order is not bitwise-equal.

Errors. Bad shards and samples are skipped and counted once per (shard, key) by the worker
that owns the position (a broken tar is a shard-level event at the position where it broke)
and sent with the next item; the main process enforces the :class:`ErrorBudget`.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import random
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, cast

from pydantic import Field
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmpretrain.config import ConfigModel
from mmpretrain.errors import DataFormatError, UserError

from .decoders import (
    DEFAULT_MAX_AUDIO_SECONDS,
    DEFAULT_MAX_IMAGE_PIXELS,
    DecodedSample,
    DecodeError,
    DecodeLimits,
    decode_sample,
)
from .error_budget import ErrorBudget, SkipEvent
from .shard_stream import TAR_LEVEL_REASONS, expand_shards, shard_counts, shard_outcomes
from .skips import SkipCounter
from .types import Sample

logger = logging.getLogger("mmpretrain.data")

MAX_WORKER_RESTARTS = 3
"""Times the worker processes are restarted after one died, before the run stops."""

UNSHUFFLED_BLOCK = 1
"""Block size (samples) when ``shuffle_buffer`` is 0: the order is the identity, so each
sample is passed on as soon as it is read (a block is held whole: one sample in memory)."""


class ReaderConfig(ConfigModel):
    """Where the shards are and how they are read."""

    shards: list[str] = Field(min_length=1)
    """Shard paths, globs, brace patterns (`data/shard-{000000..000009}.tar`), directories
    or webdataset URLs (`pipe:aws s3 cp s3://bucket/shard-000000.tar -`). A `pipe:` URL runs
    its command in a shell: use trusted configs only."""
    shuffle_buffer: int = Field(1000, ge=0)
    """Samples per shuffle block (0 = read in order). Larger mixes better, holds more."""
    num_workers: int = Field(0, ge=0)
    """DataLoader worker processes per rank (0 = read in the main process)."""
    max_errors: int = Field(100, ge=0)
    """Distinct bad samples skipped before the run stops (exit 2)."""
    max_error_rate: float = Field(0.05, ge=0.0, le=1.0)
    """Largest fraction of bad samples among the last 1000 (checked from 100 on)."""
    max_image_pixels: int = Field(DEFAULT_MAX_IMAGE_PIXELS, ge=1)
    """Larger images are skipped (image_too_large), checked before decoding."""
    max_audio_seconds: float = Field(DEFAULT_MAX_AUDIO_SECONDS, gt=0)
    """Longer audio clips are skipped (audio_too_long), checked before decoding."""
    worker_timeout: float = Field(600.0, ge=0)
    """Seconds to wait for a worker's next sample before stopping with an error (a stalled
    `pipe:` command or network file system); 0 = wait forever. Only with num_workers > 0."""

    @property
    def limits(self) -> DecodeLimits:
        return DecodeLimits(self.max_image_pixels, self.max_audio_seconds)


@dataclass(frozen=True)
class ReaderState:
    """Where a rank's reader is: for each worker, the next position it will produce.

    ``positions[w]`` is an absolute position (``epoch * samples_per_epoch + q``) in the
    shuffled stream; ``next_worker`` is the worker whose item the main process takes next.
    ``epoch`` (that of the slowest worker), ``world_size``, ``rank`` and
    ``samples_per_epoch`` describe the layout the state was saved under.
    """

    epoch: int
    positions: tuple[int, ...]
    next_worker: int = 0
    world_size: int = 1
    rank: int = 0
    samples_per_epoch: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for checkpoints."""
        return {
            "epoch": self.epoch,
            "positions": list(self.positions),
            "next_worker": self.next_worker,
            "world_size": self.world_size,
            "rank": self.rank,
            "samples_per_epoch": self.samples_per_epoch,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReaderState:
        """Inverse of :meth:`as_dict`; raises :class:`DataFormatError` on a malformed state."""
        try:
            positions = tuple(int(p) for p in data["positions"])
            state = cls(
                epoch=int(data["epoch"]),
                positions=positions,
                next_worker=int(data.get("next_worker", 0)),
                world_size=int(data.get("world_size", 1)),
                rank=int(data.get("rank", 0)),
                samples_per_epoch=int(data.get("samples_per_epoch", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataFormatError(
                f"reader state {data!r} is malformed ({exc}); it needs epoch and positions"
            ) from None
        if not positions or min(positions) < 0 or state.next_worker < 0 or state.world_size < 0:
            raise DataFormatError(f"reader state {data!r} is malformed: empty or negative positions")
        return state

    @classmethod
    def starting_at(cls, position: int) -> ReaderState:
        """A layout-free state: every worker of every rank starts at ``position`` (e.g. the
        smallest position over all ranks' saved states, to resume at another world size)."""
        return cls(epoch=0, positions=(position,), world_size=0)


# ------------------------------------------------------------------------------ order


@dataclass(frozen=True)
class _Plan:
    """Everything a worker needs to produce its items (picklable for DataLoader workers)."""

    shards: tuple[str, ...]
    counts: tuple[int, ...]
    seed: int
    block: int
    shuffle: bool
    rank: int
    world_size: int
    num_workers: int  # logical workers: max(config.num_workers, 1)
    limits: DecodeLimits
    offsets: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        offsets, total = [], 0
        for count in self.counts:
            offsets.append(total)
            total += count
        object.__setattr__(self, "offsets", tuple(offsets))

    @property
    def samples_per_epoch(self) -> int:
        return sum(self.counts)

    @property
    def stride(self) -> int:
        return self.world_size * self.num_workers

    def first_owned(self, worker: int, position: int) -> int:
        """The first position >= ``position`` that ``worker`` of this rank owns."""
        own = self.rank + self.world_size * worker
        return position + (own - position) % self.stride

    def shard_of(self, index: int) -> str:
        """The shard holding global index ``index`` of an epoch."""
        return self.shards[bisect.bisect_right(self.offsets, index) - 1]

    def block_order(self, epoch: int, block: int, size: int) -> list[int]:
        """``order[i]``: the index in the block of the sample at shuffled place ``i``."""
        order = list(range(size))
        if self.shuffle:
            digest = hashlib.sha256(f"mmpretrain.reader:{self.seed}:{epoch}:{block}".encode()).digest()
            random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
        return order


def _epoch_outcomes(plan: _Plan, start: int) -> Generator[tuple[int, Sample | SkipEvent], None, None]:
    """``(global index, sample or skip)`` of one epoch from index ``start`` on, in order.

    A shard-level skip sits at the index where the shard broke, so exactly one worker owns
    it. A shard whose sample count disagrees with its index gives one ``index_mismatch``.
    """
    for shard, low, count in zip(plan.shards, plan.offsets, plan.counts, strict=True):
        if count == 0 or low + count <= start:
            continue
        produced, broken = 0, False
        with closing(shard_outcomes(shard)) as outcomes:
            for local, outcome in outcomes:
                if local >= count:
                    broken = isinstance(outcome, SkipEvent) and outcome.reason in TAR_LEVEL_REASONS
                    if not broken:
                        outcome = SkipEvent(
                            shard,
                            "",
                            "index_mismatch",
                            f"holds more samples than the {count} its index.json lists; rebuild the index",
                        )
                    if low + count - 1 >= start:
                        yield low + count - 1, outcome
                    break
                broken = broken or (isinstance(outcome, SkipEvent) and outcome.reason in TAR_LEVEL_REASONS)
                produced = local + 1
                if low + local >= start:
                    yield low + local, outcome
        if not broken and produced < count and low + produced >= start:
            yield (
                low + produced,
                SkipEvent(
                    shard,
                    "",
                    "index_mismatch",
                    f"holds {produced} samples but its index.json lists {count}; rebuild the index",
                ),
            )


@dataclass
class _Item:
    """What a worker sends: its next position, a sample (None: skips only), the skips before it."""

    worker: int
    next_position: int
    sample: DecodedSample | None
    events: list[SkipEvent]


def _worker_items(plan: _Plan, worker: int, start: int) -> Iterator[_Item]:
    """The items of ``worker`` from position ``start`` on, forever.

    Blocks are read whole (their shuffled order can put any of their samples first); the
    worker keeps only the raw samples it owns and decodes each when it is its turn. When a
    block ends with owned positions not covered by a sample, a sample-less item carries
    their skips (so an all-bad stretch still reaches the error budget, and a worker never
    goes silent, which would stall DataLoader's round-robin).
    """
    n, stride = plan.samples_per_epoch, plan.stride
    position = plan.first_owned(worker, start)
    while True:
        epoch, q = divmod(position, n)
        base = epoch * n
        block_start = q // plan.block * plan.block
        with closing(_epoch_outcomes(plan, block_start)) as stream:
            lookahead: tuple[int, Sample | SkipEvent] | None = next(stream, None)
            while position < base + n:
                q = position - base
                block_start = q // plan.block * plan.block
                block_end = min(block_start + plan.block, n)
                owned = range(q, block_end, stride)
                order = plan.block_order(epoch, block_start // plan.block, block_end - block_start)
                wanted = {block_start + order[i - block_start]: i for i in owned}
                found: dict[int, list[Sample | SkipEvent]] = {}
                while lookahead is not None and lookahead[0] < block_end:
                    index, outcome = lookahead
                    if index in wanted:
                        found.setdefault(wanted[index], []).append(outcome)
                    lookahead = next(stream, None)
                pending: list[SkipEvent] = []
                for i in owned:
                    for outcome in found.pop(i, ()):
                        if isinstance(outcome, SkipEvent):
                            pending.append(outcome)
                            continue
                        shard = plan.shard_of(block_start + order[i - block_start])
                        try:
                            sample = decode_sample(outcome, plan.limits)
                        except DecodeError as exc:
                            pending.append(SkipEvent(shard, outcome.key, exc.reason, str(exc)))
                            continue
                        sample.shard = shard
                        position = base + i + stride
                        yield _Item(worker, position, sample, pending)
                        pending = []
                after = plan.first_owned(worker, base + block_end)
                if position < base + block_end:  # owned positions left without a sample
                    yield _Item(worker, after, None, pending)
                position = after


def _identity(item: _Item) -> _Item:
    return item  # DataLoader's default would turn numpy audio into tensors


class _WorkerStreams(IterableDataset[_Item]):
    """The IterableDataset of the DataLoader: each worker process runs one logical worker.

    DataLoader worker ``i`` plays logical worker ``(i + first) % n``, so that its strict
    round-robin over workers starts with the worker whose item a resumed state expects next.
    """

    def __init__(self, plan: _Plan, starts: Sequence[int], first: int):
        self.plan, self.starts, self.first = plan, list(starts), first

    def __iter__(self) -> Iterator[_Item]:
        info = get_worker_info()
        worker = ((info.id if info is not None else 0) + self.first) % self.plan.num_workers
        return _worker_items(self.plan, worker, self.starts[worker])


# ------------------------------------------------------------------------------ reader


class ShardReader:
    """Decoded samples of one rank, forever, each with the :class:`ReaderState` after it.

    ``reader.samples(state)`` resumes exactly after the sample that ``state`` came with
    (see the module docstring). ``reader.budget`` is the :class:`ErrorBudget` of the
    latest ``samples()`` stream.
    """

    def __init__(self, config: ReaderConfig, rank: int = 0, world_size: int = 1, seed: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.config = config
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shards = expand_shards(config.shards)
        self.counts = shard_counts(self.shards)
        self._plan = _Plan(
            shards=tuple(self.shards),
            counts=tuple(self.counts),
            seed=seed,
            block=config.shuffle_buffer or UNSHUFFLED_BLOCK,
            shuffle=config.shuffle_buffer > 0,
            rank=rank,
            world_size=world_size,
            num_workers=max(config.num_workers, 1),
            limits=config.limits,
        )
        if self.samples_per_epoch == 0:
            raise DataFormatError(
                f"no samples in {len(self.shards)} shard(s) ({self.shards[0]}, ...): the dataset is empty"
            )
        self.budget = ErrorBudget(config.max_errors, config.max_error_rate)

    @property
    def samples_per_epoch(self) -> int:
        """Samples (good or bad) in one pass over the shards."""
        return self._plan.samples_per_epoch

    def initial_state(self) -> ReaderState:
        """The state before the first sample."""
        plan = self._plan
        positions = tuple(plan.first_owned(w, 0) for w in range(plan.num_workers))
        return self._state(positions, 0)

    def _state(self, positions: Sequence[int], next_worker: int) -> ReaderState:
        return ReaderState(
            epoch=min(positions) // self.samples_per_epoch,
            positions=tuple(positions),
            next_worker=next_worker,
            world_size=self.world_size,
            rank=self.rank,
            samples_per_epoch=self.samples_per_epoch,
        )

    def _resume(self, state: ReaderState | None) -> ReaderState:
        plan = self._plan
        if state is None:
            return self.initial_state()
        if state.samples_per_epoch not in (0, self.samples_per_epoch):
            logger.warning(
                "the shards hold %d samples but the saved reader state was for %d: the data "
                "changed, so positions no longer name the same samples",
                self.samples_per_epoch,
                state.samples_per_epoch,
            )
        same_layout = (
            (state.world_size, state.rank, len(state.positions))
            == (self.world_size, self.rank, plan.num_workers)
            and all(plan.first_owned(w, p) == p for w, p in enumerate(state.positions))
            and 0 <= state.next_worker < plan.num_workers
        )
        if same_layout:
            return self._state(state.positions, state.next_worker)
        start = min(state.positions)
        if state.world_size:  # 0: a layout-free state from ReaderState.starting_at
            logger.warning(
                "the reader state was saved with world size %d, rank %d, %d worker(s); now %d, "
                "%d, %d: continuing from position %d (no sample is lost; the order is not bitwise-equal)",
                state.world_size,
                state.rank,
                len(state.positions),
                self.world_size,
                self.rank,
                plan.num_workers,
                start,
            )
        return self._state([plan.first_owned(w, start) for w in range(plan.num_workers)], 0)

    def samples(self, state: ReaderState | None = None) -> Iterator[tuple[DecodedSample, ReaderState]]:
        """Yield ``(sample, state after it)`` forever (epoch after epoch), from ``state`` on.

        Raises :class:`DataFormatError` when the error budget is exceeded.
        """
        start = self._resume(state)
        plan = self._plan
        positions, next_worker = list(start.positions), start.next_worker
        self.budget = budget = ErrorBudget(self.config.max_errors, self.config.max_error_rate)
        restarts = 0
        while True:
            items = self._items(positions, next_worker)
            try:
                for item in items:
                    if item.worker != next_worker:  # DataLoader's round-robin is what makes this exact
                        raise RuntimeError(
                            f"reader got an item from worker {item.worker}, expected {next_worker}"
                        )
                    positions[item.worker] = item.next_position
                    next_worker = (item.worker + 1) % plan.num_workers
                    budget.record(item.events, good=item.sample is not None)
                    if item.sample is not None:
                        yield item.sample, self._state(positions, next_worker)
            except RuntimeError as exc:
                # A worker killed (the OOM killer, a crash in a decoder library): the state
                # is exact, so new workers continue where the merged stream stands.
                restarts = self._after_worker_failure(exc, restarts)
            finally:
                # Stop worker processes now, also when the budget raises (a traceback would
                # otherwise keep the loader, and its prefetching workers, alive).
                shutdown = getattr(items, "_shutdown_workers", None)
                if shutdown is not None:
                    shutdown()

    def _items(self, positions: Sequence[int], next_worker: int) -> Iterator[_Item]:
        """Every worker's items merged round-robin, from ``positions`` on."""
        if self.config.num_workers == 0:
            return _worker_items(self._plan, 0, positions[0])
        loader = DataLoader(
            _WorkerStreams(self._plan, positions, next_worker),
            batch_size=None,
            num_workers=self.config.num_workers,
            collate_fn=cast(Any, _identity),
            persistent_workers=False,
            in_order=True,  # strict round-robin over workers: what makes the merge exact
            timeout=self.config.worker_timeout,
        )
        return iter(loader)

    def _after_worker_failure(self, exc: RuntimeError, restarts: int) -> int:
        """Restart count after a DataLoader error: a dead worker is restarted (up to
        MAX_WORKER_RESTARTS times); a timeout or anything else stops the run."""
        text = str(exc)
        if "DataLoader timed out" in text:
            raise UserError(
                f"no sample from a data worker in {self.config.worker_timeout:g} s (shards "
                f"{self.shards[0]}, ...): a stalled pipe: command or file system? raise "
                "worker_timeout in the reader config if reading is this slow"
            ) from exc
        if "DataLoader worker" not in text or not ("exited unexpectedly" in text or "killed" in text):
            raise exc
        restarts += 1
        if restarts > MAX_WORKER_RESTARTS:
            raise UserError(
                f"data workers died {restarts} times ({text}); out of memory? lower num_workers "
                "or shuffle_buffer in the reader config; committed checkpoints are intact: "
                "continue with --resume"
            ) from exc
        logger.warning(
            "%s: restarting the data workers at the current position (%d/%d)",
            text,
            restarts,
            MAX_WORKER_RESTARTS,
        )
        return restarts


# ------------------------------------------------------------------------------ stats


def reader_stats(
    patterns: str | Sequence[str],
    limits: DecodeLimits | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> dict[str, Any]:
    """One in-order pass over the shards, decoding everything (``mmpt data stats``).

    Returns ``shards``, ``samples`` (good), ``skipped``, ``errors_by_reason``, ``images``,
    ``audio_clips``, ``audio_seconds``, ``text_chars`` (text segments and transcripts),
    ``text_tokens`` of text segments (by ``count_tokens``, else estimated as all
    characters / 4; ``text_tokens_exact`` says which) and ``examples`` (the first skip messages).
    ``progress(done, total, shard)`` is called before each shard.
    """
    limits = limits or DecodeLimits()
    shards = expand_shards(patterns)
    skips = SkipCounter(max_skips=None, name="shards")
    images = audio_clips = text_chars = text_tokens = 0
    audio_seconds = 0.0
    for done, shard in enumerate(shards):
        if progress is not None:
            progress(done, len(shards), shard)
        for _, outcome in shard_outcomes(shard):
            if isinstance(outcome, SkipEvent):
                skips.skip(outcome.reason, f"{shard}:{outcome.key}" if outcome.key else shard, outcome.detail)
                continue
            try:
                sample = decode_sample(outcome, limits)
            except DecodeError as exc:
                skips.skip(exc.reason, f"{shard}:{outcome.key}", str(exc))
                continue
            skips.ok()
            images += sample.num_images
            audio_clips += sum(seg.kind == "audio" for seg in sample.segments)
            audio_seconds += sample.audio_seconds
            text_chars += sum(len(seg.text or "") for seg in sample.segments)
            if count_tokens is not None:
                text_tokens += sum(
                    count_tokens(seg.text or "") for seg in sample.segments if seg.kind == "text"
                )
    return {
        "shards": len(shards),
        **skips.as_dict(),
        "images": images,
        "audio_clips": audio_clips,
        "audio_seconds": round(audio_seconds, 3),
        "text_chars": text_chars,
        "text_tokens": text_tokens if count_tokens is not None else text_chars // 4,
        "text_tokens_exact": count_tokens is not None,
        "examples": list(skips.examples),
    }
