"""Text documents in, packed batches out, with an exact, resumable position.

The documents of all sources form one deterministic global order (sources concatenated,
then repeated epoch after epoch). Rank ``r`` of ``world`` takes every ``world``-th
document starting at ``r`` (from the state's ``offset``, 0 unless the run changed its
world size), tokenizes it (+ EOS), and packs its share with :class:`TextPacker`. The state
after each batch (epoch, packer round, packs emitted) is carried with the batch, so a
checkpoint records exactly what the loop consumed. :meth:`TextStreamState.continuing`
turns the states of all ranks into one that any world size resumes from: the earliest
global document some rank had not finished packing (nothing lost; a few documents of
the ranks that were ahead are seen again).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mmpretrain.data.data_config import DataConfig
from mmpretrain.data.packing import PackedDocument, PackerState, TextPacker, build_text_batch
from mmpretrain.data.skips import SkipCounter
from mmpretrain.data.text_sources import TextDocument, TextSourceConfig, describe_source, iter_documents
from mmpretrain.data.tokenizer import TextTokenizer
from mmpretrain.data.types import PackedBatch
from mmpretrain.errors import DataFormatError

TOKENIZE_CHUNK = 256  # documents per encode_batch call (the Rust backend parallelizes)


@dataclass(frozen=True)
class TextStreamState:
    """Position of a rank's text stream: epoch plus the packer's round and packs emitted.

    A rank's ``i``-th document (``round_start`` counts these) is global document
    ``offset + i * world_size + rank`` of the epoch; ``offset`` is 0 except in the epoch
    where a run resumed at another world size.
    """

    epoch: int = 0
    round_start: int = 0
    emitted: int = 0
    offset: int = 0

    def as_dict(self) -> dict[str, int]:
        """JSON-ready form for checkpoints."""
        return {
            "epoch": self.epoch,
            "round_start": self.round_start,
            "emitted": self.emitted,
            "offset": self.offset,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextStreamState:
        """Inverse of :meth:`as_dict`."""
        offset = int(data.get("offset", 0))
        return cls(int(data["epoch"]), int(data["round_start"]), int(data["emitted"]), offset)

    def global_round_start(self, rank: int, world_size: int) -> tuple[int, int]:
        """``(epoch, global document index)`` of the first document of this rank's
        current packing round (saved by ``rank`` of ``world_size``)."""
        return self.epoch, self.offset + self.round_start * world_size + rank

    @classmethod
    def continuing(cls, states: Sequence[TextStreamState]) -> TextStreamState:
        """The state every rank of any world size starts from after a run whose ranks
        (``states[r]`` of rank ``r``) saved these: at the earliest global document any of
        them had not finished packing. No document is lost; those that ranks ahead had
        already packed are seen again (at most one packing round per rank)."""
        epoch, position = min(s.global_round_start(r, len(states)) for r, s in enumerate(states))
        return cls(epoch=epoch, round_start=0, emitted=0, offset=position)


def global_documents(sources: list[TextSourceConfig], skips: SkipCounter) -> Iterator[TextDocument]:
    """All sources' documents, concatenated in config order."""
    return itertools.chain.from_iterable(iter_documents(source, skips) for source in sources)


class TextBatchStream:
    """Endless packed batches of ``batch_size`` x ``seq_len`` for one rank."""

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer: TextTokenizer,
        seq_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.skips = SkipCounter(max_skips=cfg.max_skips, name=", ".join(map(describe_source, cfg.sources)))

    def _rank_documents(self, start: int, offset: int = 0) -> Iterator[PackedDocument]:
        """This rank's tokenized documents from its ``start``-th on (the rank's ``i``-th
        document is global document ``offset + i * world_size + rank``)."""
        documents = global_documents(self.cfg.sources, self.skips)
        first = offset + start * self.world_size + self.rank
        mine = itertools.islice(documents, first, None, self.world_size)
        eos = self.tokenizer.eos_id
        while chunk := list(itertools.islice(mine, TOKENIZE_CHUNK)):
            for document, ids in zip(
                chunk, self.tokenizer.encode_batch([d.text for d in chunk]), strict=True
            ):
                yield PackedDocument(document.key, [*ids, eos])

    def batches(self, state: TextStreamState | None = None) -> Iterator[tuple[PackedBatch, TextStreamState]]:
        """Yield ``(batch, state_after_batch)`` forever, starting at ``state``."""
        state = state or TextStreamState()
        rows: list[list[PackedDocument]] = []
        epoch, offset = state.epoch, state.offset
        packer_state = PackerState(state.round_start, state.emitted)
        while True:
            # bad records are counted per pass over the data, so the limit is per epoch
            self.skips = SkipCounter(max_skips=self.cfg.max_skips, name=self.skips.name)
            packer = TextPacker(self.seq_len, self.cfg.buffer_docs, seed=self.seed + epoch)
            produced = False
            documents = self._rank_documents(packer_state.round_start, offset)
            for pack, after in packer.pack(documents, packer_state):
                produced = True
                rows.append(pack)
                if len(rows) == self.batch_size:
                    batch = build_text_batch(rows, self.seq_len, self.tokenizer.pad_id)
                    rows = []
                    yield batch, TextStreamState(epoch, after.round_start, after.emitted, offset)
            if not produced and packer_state == PackerState() and offset == 0:
                raise DataFormatError(
                    f"no documents for rank {self.rank} of {self.world_size} in "
                    f"{', '.join(map(describe_source, self.cfg.sources))}: the dataset is empty "
                    f"({self.skips.skipped} records skipped)"
                )
            epoch, offset = epoch + 1, 0
            packer_state = PackerState()
