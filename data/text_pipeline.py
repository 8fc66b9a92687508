"""Text documents in, packed batches out, with an exact, resumable position.

The documents of all sources form one deterministic global order (sources concatenated,
then repeated epoch after epoch). Rank ``r`` of ``world`` takes every ``world``-th
document starting at ``r``, tokenizes it (+ EOS), and packs its share with
:class:`TextPacker`. The state after each batch (epoch, packer round, packs emitted) is
carried with the batch, so a checkpoint records exactly what the loop consumed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
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
    """Position of a rank's text stream: epoch plus the packer's round and packs emitted."""

    epoch: int = 0
    round_start: int = 0
    emitted: int = 0

    def as_dict(self) -> dict[str, int]:
        """JSON-ready form for checkpoints."""
        return {"epoch": self.epoch, "round_start": self.round_start, "emitted": self.emitted}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextStreamState:
        """Inverse of :meth:`as_dict`."""
        return cls(int(data["epoch"]), int(data["round_start"]), int(data["emitted"]))


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

    def _rank_documents(self, start: int) -> Iterator[PackedDocument]:
        """This rank's tokenized documents from its ``start``-th on."""
        documents = global_documents(self.cfg.sources, self.skips)
        mine = itertools.islice(documents, start * self.world_size + self.rank, None, self.world_size)
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
        epoch = state.epoch
        packer_state = PackerState(state.round_start, state.emitted)
        while True:
            # bad records are counted per pass over the data, so the limit is per epoch
            self.skips = SkipCounter(max_skips=self.cfg.max_skips, name=self.skips.name)
            packer = TextPacker(self.seq_len, self.cfg.buffer_docs, seed=self.seed + epoch)
            produced = False
            for pack, after in packer.pack(self._rank_documents(packer_state.round_start), packer_state):
                produced = True
                rows.append(pack)
                if len(rows) == self.batch_size:
                    batch = build_text_batch(rows, self.seq_len, self.tokenizer.pad_id)
                    rows = []
                    yield batch, TextStreamState(epoch, after.round_start, after.emitted)
            if not produced and packer_state == PackerState():
                raise DataFormatError(
                    f"no documents for rank {self.rank} of {self.world_size} in "
                    f"{', '.join(map(describe_source, self.cfg.sources))}: the dataset is empty "
                    f"({self.skips.skipped} records skipped)"
                )
            epoch += 1
            packer_state = PackerState()
