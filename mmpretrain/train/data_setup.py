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
from mmpretrain.data.media_vocab import (
    VOCAB_FILE,
    MediaCodes,
    MediaVocabulary,
    load_media_codes,
    media_tokenizer_kinds,
)
from mmpretrain.data.skips import SkipCounter
from mmpretrain.data.text_pipeline import TextBatchStream, TextStreamState, global_documents
from mmpretrain.data.tokenizer import BpeTokenizerConfig, TextTokenizer
from mmpretrain.data.types import PackedBatch
from mmpretrain.errors import ConfigError, UserError
from mmpretrain.model.config import ModelConfig

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


def tokenizer_for_run(
    cfg: DataConfig, run_dir: Path, log: Callable[[str], None] = print, init_run_dir: Path | None = None
) -> TextTokenizer:
    """The run's tokenizer: ``tokenizer.path`` if set; else the one trained into
    ``run_dir/tokenizer`` by an earlier start of this run; else the one of the run the
    model is initialised from (``init_run_dir``, copied in); else train it now on the
    data's text (deterministic, so every start of the run gets the same tokenizer)."""
    from mmpretrain.data.tokenizer import load_tokenizer, train_bpe
    from mmpretrain.registry import TOKENIZERS

    tokenizer_cfg = cfg.tokenizer
    if tokenizer_cfg.name in media_tokenizer_kinds():
        raise ConfigError(
            f"data.tokenizer: {tokenizer_cfg.name} is a media tokenizer; data.tokenizer is the text "
            f"tokenizer (bpe): put it under model.media_tokenizers (image or audio) for early fusion"
        )
    if not isinstance(tokenizer_cfg, BpeTokenizerConfig) or tokenizer_cfg.path is not None:
        tokenizer = TOKENIZERS.build(tokenizer_cfg)
        if not isinstance(tokenizer, TextTokenizer):
            raise ConfigError(f"data.tokenizer: {tokenizer_cfg.name} does not build a text tokenizer")
        return tokenizer
    directory = run_dir / "tokenizer"
    if (directory / "tokenizer.json").is_file():
        return load_tokenizer(directory)
    inherited = init_run_dir / "tokenizer" if init_run_dir is not None else None
    if inherited is not None and (inherited / "tokenizer.json").is_file():
        log(f"using the tokenizer of {init_run_dir} (train.init_from); copied into {directory}")
        tokenizer = load_tokenizer(inherited)
        tokenizer.save(directory)
        return tokenizer
    log(f"training a {tokenizer_cfg.vocab_size}-token BPE tokenizer on the data into {directory}")
    if cfg.shards is not None:
        texts: Iterator[str] = _shard_texts(cfg)
    else:
        skips = SkipCounter(max_skips=cfg.max_skips, name="tokenizer training data")
        texts = (d.text for d in global_documents(cfg.sources, skips))
    tokenizer = train_bpe(texts, tokenizer_cfg.vocab_size)
    tokenizer.save(directory)
    return tokenizer


def media_codes_for_run(model: ModelConfig, tokenizer: TextTokenizer, run_dir: Path) -> MediaCodes | None:
    """The run's media tokenizers and vocabulary layout (None without
    ``model.media_tokenizers``). The layout is saved as ``run_dir/media_vocab.json`` at the
    first start; a later start (resume) must see the same one."""
    import torch

    with torch.random.fork_rng(devices=[]):  # building a tokenizer's modules must not move the run's RNG
        codes = load_media_codes(model.media_tokenizers, tokenizer)
    if codes is None:
        return None
    path = run_dir / VOCAB_FILE
    if path.is_file():
        saved = MediaVocabulary.load(path)
        if saved != codes.vocab:
            raise UserError(
                f"{path}: the vocabulary changed since the run started ({saved.describe()} then, "
                f"{codes.vocab.describe()} now; a tokenizer directory was retrained or replaced): "
                "resume with the text and media tokenizers the run started with"
            )
    else:
        codes.vocab.save(path)
    return codes


def batch_stream(
    cfg: DataConfig,
    tokenizer: TextTokenizer,
    processors: dict[str, MediaProcessor],
    seq_len: int,
    batch_size: int,
    seed: int,
    state: dict[str, Any] | None,
    codes: MediaCodes | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[PackedBatch, StreamState]]:
    """The endless ``(batch, state_after_batch)`` stream of ``rank`` of ``world_size``,
    resumed at ``state`` (the JSON form saved in a checkpoint); media of the modalities in
    ``codes`` become code tokens (early fusion)."""
    if cfg.shards is not None:
        # A text-only model may read text-only shards; the stream stops at the first media
        # item it has no encoder or media tokenizer for (see MediaBatchStream).
        media = MediaBatchStream(
            cfg.shards, tokenizer, processors, seq_len, batch_size, seed, rank, world_size, codes=codes
        )
        return media.batches(MediaStreamState.from_dict(state) if state else None)
    text = TextBatchStream(cfg, tokenizer, seq_len, batch_size, seed, rank, world_size)
    return text.batches(TextStreamState.from_dict(state) if state else None)
