"""Weighted mixing of several shard datasets, with an exact, resumable position.

Each source is a :class:`ShardReader` of its own (same rank and world size, a seed derived
from the run seed and the source name). The source of a rank's ``i``-th document is a pure
function of ``(seed, rank, i, probabilities)``: a counter-based uniform draw (a keyed hash
of ``seed, rank, i``) mapped through the inverse CDF of the source probabilities. So the
mixed order needs no state beyond ``i`` and each source's own reader state, a resumed run
continues exactly, and when the weights change at a resume (a stage boundary) the new
probabilities apply from document ``i`` on with nothing replayed.

Probabilities: ``p_k = w_k ** (1 / temperature) / sum_j w_j ** (1 / temperature)``.
Temperature 1 uses the weights as given, a larger one flattens them towards uniform
(``inf`` would be uniform), a smaller one sharpens them. A weight left unset is the
source's sample count (size-proportional mixing, e.g. with a temperature to up-sample
small sources).
"""

from __future__ import annotations

import bisect
import hashlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import Field

from mmpretrain.config import ConfigModel
from mmpretrain.errors import ConfigError, DataFormatError

from .decoders import DecodedSample
from .reader import ReaderConfig, ReaderState, ShardReader

logger = logging.getLogger("mmpretrain.data")


class MixSourceConfig(ConfigModel):
    """One dataset of a mix: its name, its shards and its weight."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Source name: the key of its state in checkpoints and of its counters in
    metrics.jsonl (`docs/<name>`, `tokens/<name>`). Letters, digits, `_`, `.` and `-`."""
    reader: ReaderConfig
    """The source's shards and how to read them (shuffle, workers, limits, error budget)."""
    weight: float | None = Field(None, gt=0)
    """Relative weight (normalised over the sources); None: the source's sample count.
    Set it on every source or on none. May change when a run is resumed."""


def check_mix(sources: Sequence[MixSourceConfig], temperature: float) -> None:
    """Raise ``ValueError`` (a one-line config error) on duplicate names, weights set on
    only some sources, or a non-positive temperature."""
    names = [s.name for s in sources]
    duplicate = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if duplicate is not None:
        raise ValueError(f"mix source names must be unique: {duplicate!r} appears more than once")
    weighted = [s.weight is not None for s in sources]
    if any(weighted) and not all(weighted):
        unset = [s.name for s in sources if s.weight is None]
        raise ValueError(
            f"set weight on every mix source or on none (none = proportional to size); unset on {unset}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def mix_probabilities(weights: Sequence[float], temperature: float = 1.0) -> list[float]:
    """``p_k`` proportional to ``weights[k] ** (1 / temperature)``, summing to 1."""
    if not weights or min(weights) <= 0 or not temperature > 0:
        raise ValueError(f"weights must be positive and temperature > 0, got {weights}, {temperature}")
    top = max(weights)
    scaled = [(w / top) ** (1.0 / temperature) for w in weights]  # / top: no overflow at small T
    total = sum(scaled)
    return [s / total for s in scaled]


def draw_source(seed: int, rank: int, index: int, cumulative: Sequence[float]) -> int:
    """The source of document ``index`` of ``rank``: a keyed-hash uniform in [0, 1) mapped
    through ``cumulative`` (the running sums of the probabilities, last one 1.0)."""
    digest = hashlib.blake2b(f"{seed}:{rank}:{index}".encode(), digest_size=8, person=b"mmpt.mix").digest()
    uniform = int.from_bytes(digest, "big") / 2**64
    return min(bisect.bisect_right(cumulative, uniform), len(cumulative) - 1)


@dataclass(frozen=True)
class MixState:
    """Where a rank's mixed reader is: ``position`` documents drawn, each source's reader
    state (by name) and how many documents each source has given so far."""

    position: int = 0
    readers: Mapping[str, ReaderState] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for checkpoints."""
        return {
            "position": self.position,
            "readers": {name: state.as_dict() for name, state in self.readers.items()},
            "counts": dict(self.counts),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MixState:
        """Inverse of :meth:`as_dict`; raises :class:`DataFormatError` on a malformed state."""
        try:
            readers = {str(n): ReaderState.from_dict(s) for n, s in data["readers"].items()}
            counts = {str(n): int(c) for n, c in data.get("counts", {}).items()}
            position = int(data["position"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataFormatError(
                f"mixed reader state {dict(data)!r} is malformed ({exc}); it needs position and readers"
            ) from None
        return cls(position, readers, counts)


class MixedReader:
    """Decoded samples of one rank drawn from several weighted sources, forever, each with
    the :class:`MixState` after it (the same interface as :class:`ShardReader`).

    Each yielded sample's ``source`` is the name of the mix source it was drawn from.
    Every source with ``num_workers > 0`` runs its own worker processes.
    """

    def __init__(
        self,
        sources: Sequence[MixSourceConfig],
        temperature: float = 1.0,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        if not sources:
            raise ConfigError("a mix needs at least one source")
        try:
            check_mix(sources, temperature)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.names = [s.name for s in sources]
        self.rank, self.seed = rank, seed
        self.readers = {
            s.name: ShardReader(s.reader, rank=rank, world_size=world_size, seed=source_seed(seed, s.name))
            for s in sources
        }
        weights = [
            s.weight if s.weight is not None else float(self.readers[s.name].samples_per_epoch)
            for s in sources
        ]
        self.probabilities = dict(zip(self.names, mix_probabilities(weights, temperature), strict=True))
        running, self._cumulative = 0.0, []
        for name in self.names:
            running += self.probabilities[name]
            self._cumulative.append(running)
        self._cumulative[-1] = 1.0

    def initial_state(self) -> MixState:
        """The state before the first document."""
        return MixState(
            0, {n: r.initial_state() for n, r in self.readers.items()}, dict.fromkeys(self.names, 0)
        )

    def source_at(self, index: int) -> str:
        """The name of the source of this rank's document ``index``."""
        return self.names[draw_source(self.seed, self.rank, index, self._cumulative)]

    def _resume(self, state: MixState | None) -> MixState:
        """``state`` matched to the configured sources by name: a new source starts fresh, a
        removed one is dropped (both logged)."""
        if state is None:
            return self.initial_state()
        added = [n for n in self.names if n not in state.readers]
        removed = [n for n in state.readers if n not in self.readers]
        if added or removed:
            logger.warning(
                "the mix sources changed at document %d: added %s (start at their beginning), removed %s",
                state.position,
                added or "none",
                removed or "none",
            )
        fresh = self.initial_state()
        readers = {n: state.readers.get(n, fresh.readers[n]) for n in self.names}
        counts = {n: state.counts.get(n, 0) for n in self.names}
        return MixState(state.position, readers, counts)

    def samples(self, state: MixState | None = None) -> Iterator[tuple[DecodedSample, MixState]]:
        """Yield ``(sample, state after it)`` forever, from ``state`` on.

        A source's reader starts on its first draw, so a source that is never drawn costs
        nothing. Raises :class:`DataFormatError` when a source exceeds its error budget.
        """
        start = self._resume(state)
        position, readers, counts = start.position, dict(start.readers), dict(start.counts)
        streams: dict[str, Iterator[tuple[DecodedSample, ReaderState]]] = {}
        try:
            while True:
                name = self.source_at(position)
                if name not in streams:
                    streams[name] = self.readers[name].samples(readers[name])
                sample, readers[name] = next(streams[name])
                position += 1
                counts[name] += 1
                yield replace(sample, source=name), MixState(position, dict(readers), dict(counts))
        finally:
            for stream in streams.values():
                close = getattr(stream, "close", None)
                if close is not None:
                    close()  # stops that source's worker processes


def source_seed(seed: int, name: str) -> int:
    """The shuffle seed of source ``name``: distinct per source, stable when others change."""
    digest = hashlib.sha256(f"mmpretrain.mix:{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big")
