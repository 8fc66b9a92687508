"""Everything the loop needs from the data config: the tokenizer, the batch stream for
this rank, and the stream's state to and from checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import (
    Any,
    TypeAlias,
)

from mmpretrain.data.data_config import DataConfig
from mmpretrain.data.media_pipeline import MediaBatchStream, MediaProcessor, MediaStreamState
from mmpretrain.data.skips import SkipCounter
from mmpretrain.data.text_pipeline import TextBatchStream, TextStreamState, global_documents
from mmpretrain.data.tokenizer import BpeTokenizerConfig, TextTokenizer
from mmpretrain.data.types import PackedBatch
from mmpretrain.errors import ConfigError

StreamState: TypeAlias = TextStreamState | MediaStreamState


def _shard_texts(cfg: DataConfig) -> Iterator[str]:
    """Text segments of one in-order pass over the shards, of every mix source in turn
    (tokenizer training)."""
    from mmpretrain.data.error_budget import SkipEvent
    from mmpretrain.data.reader import expand_shards
    from mmpretrain.data.shard_stream import shard_outcomes

    assert cfg.shards is not None
    readers = [cfg.shards.reader] if cfg.shards.reader is not None else [s.reader for s in cfg.shards.mix]
    for reader in readers:
        for shard in expand_shards(reader.shards):
            for _, outcome in shard_outcomes(shard):
                if not isinstance(outcome, SkipEvent):
                    yield from (s.text for s in outcome.segments if s.kind == "text" and s.text)


def tokenizer_for_run(cfg: DataConfig, run_dir: Path, log: Callable[[str], None] = print) -> TextTokenizer:
    """The run's tokenizer: ``tokenizer.path`` if set; else the one trained into
    ``run_dir/tokenizer`` by an earlier start of this run; else train it now on the
    data's text (deterministic, so every start of the run gets the same tokenizer)."""
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
    if cfg.shards is not None:
        texts: Iterator[str] = _shard_texts(cfg)
    else:
        skips = SkipCounter(max_skips=cfg.max_skips, name="tokenizer training data")
        texts = (d.text for d in global_documents(cfg.sources, skips))
    tokenizer = train_bpe(texts, tokenizer_cfg.vocab_size)
    tokenizer.save(directory)
    return tokenizer


def batch_stream(
    cfg: DataConfig,
    tokenizer: TextTokenizer,
    processors: dict[str, MediaProcessor],
    seq_len: int,
    batch_size: int,
    seed: int,
    state: dict[str, Any] | None,
) -> Iterator[tuple[PackedBatch, StreamState]]:
    """This rank's endless ``(batch, state_after_batch)`` stream, resumed at ``state``
    (the JSON form saved in a checkpoint)."""
    if cfg.shards is not None:
        if not processors:
            raise ConfigError("data.shards holds media but the model has no encoders: add model.encoders")
        media = MediaBatchStream(cfg.shards, tokenizer, processors, seq_len, batch_size, seed)
        return media.batches(MediaStreamState.from_dict(state) if state else None)
    text = TextBatchStream(cfg, tokenizer, seq_len, batch_size, seed)
    return text.batches(TextStreamState.from_dict(state) if state else None)
