"""Text documents in, packed batches out, with an exact, resumable position.

The documents of all sources form one deterministic global order (sources concatenated,
then repeated epoch after epoch). Rank ``r`` of ``world`` takes every ``world``-th
document starting at ``r``, tokenizes it (+ EOS), and packs its share with
:class:`TextPacker`. The state after each batch (epoch, packer round, packs emitted) is
carried with the batch, so a checkpoint records exactly what the loop consumed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from mmpretrain.config import ComponentConfig, ConfigModel, FromRegistry
from mmpretrain.data.packing import PackedDocument, PackerState, TextPacker, build_text_batch
from mmpretrain.data.skips import SkipCounter
from mmpretrain.data.text_sources import TextDocument, TextSourceConfig, describe_source, iter_documents
from mmpretrain.data.tokenizer import BpeTokenizerConfig, TextTokenizer
from mmpretrain.data.types import PackedBatch
from mmpretrain.errors import DataFormatError

TOKENIZE_CHUNK = 256  # documents per encode_batch call (the Rust backend parallelizes)


class TextDataConfig(ConfigModel):
    """Text training data: sources, tokenizer and packing."""

    sources: list[TextSourceConfig] = Field(min_length=1)
    """Text sources, read in order as one stream (format: text, jsonl, parquet, shards,
    shakespeare)."""
    tokenizer: Annotated[ComponentConfig, FromRegistry("tokenizers")] = BpeTokenizerConfig(name="bpe")
    """Tokenizer; a `bpe` tokenizer without `path` is trained on the sources into the run
    directory at the start of the run (vocab_size = learned vocabulary)."""
    buffer_docs: int = Field(2048, gt=0)
    """Documents packed together per round (larger: fuller packs, more memory)."""
    max_skips: int = Field(100, ge=0)
    """Bad records (invalid JSON, bad UTF-8, ...) skipped before the run stops."""


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
        cfg: TextDataConfig,
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


def tokenizer_for_run(
    cfg: TextDataConfig, run_dir: Path, log: Callable[[str], None] = print
) -> TextTokenizer:
    """The run's tokenizer: ``tokenizer.path`` if set; else the one trained into
    ``run_dir/tokenizer`` by an earlier start of this run; else train it now on the
    sources (deterministic, so every start of the run gets the same tokenizer)."""
    from mmpretrain.data.tokenizer import load_tokenizer, train_bpe
    from mmpretrain.registry import TOKENIZERS

    tokenizer_cfg = cfg.tokenizer
    if not isinstance(tokenizer_cfg, BpeTokenizerConfig) or tokenizer_cfg.path is not None:
        tokenizer = TOKENIZERS.build(tokenizer_cfg)
        assert isinstance(tokenizer, TextTokenizer)
        return tokenizer
    directory = run_dir / "tokenizer"
    if (directory / "tokenizer.json").is_file():
        return load_tokenizer(directory)
    log(f"training a {tokenizer_cfg.vocab_size}-token BPE tokenizer on the data into {directory}")
    skips = SkipCounter(max_skips=cfg.max_skips, name="tokenizer training data")
    tokenizer = train_bpe((d.text for d in global_documents(cfg.sources, skips)), tokenizer_cfg.vocab_size)
    tokenizer.save(directory)
    return tokenizer
