"""Demo shards stream into validated multimodal PackedBatches with exact resume."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from mmpretrain.data.demo_data import build_demo_dataset
from mmpretrain.data.media_pipeline import (
    MediaBatchStream,
    MediaDataConfig,
    MediaStreamState,
    StandInAudioProcessor,
    StandInImageProcessor,
)
from mmpretrain.data.reader import ReaderConfig
from mmpretrain.data.tokenizer import TextTokenizer, train_bpe
from mmpretrain.errors import ConfigError

PROCESSORS = {"image": StandInImageProcessor(size=32, patch=8), "audio": StandInAudioProcessor()}


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    build_demo_dataset(out, samples=60, shards=4, seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    text = "Two small red circles at the top and a large blue star. Question: How many? Answer: 3 "
    return train_bpe([text * 5] * 20, vocab_size=300)


def stream(shards: Path, tokenizer: TextTokenizer, workers: int = 0, **data: object) -> MediaBatchStream:
    reader = ReaderConfig(shards=[str(shards / "shard-*.tar")], shuffle_buffer=16, num_workers=workers)
    cfg = MediaDataConfig(reader=reader, buffer_docs=12, **data)  # type: ignore[arg-type]
    return MediaBatchStream(cfg, tokenizer, PROCESSORS, seq_len=256, batch_size=2, seed=3)


def same(a: list, b: list) -> bool:
    return all(
        torch.equal(x.input_ids, y.input_ids)
        and x.keys == y.keys
        and all(torch.equal(x.media[m].inputs, y.media[m].inputs) for m in x.media)
        for (x, _), (y, _) in zip(a, b, strict=True)
    )


def test_batches_are_valid_and_carry_images_and_audio(demo_shards: Path, tokenizer: TextTokenizer) -> None:
    batches = list(itertools.islice(stream(demo_shards, tokenizer).batches(), 20))
    modalities = set()
    for batch, _ in batches:
        batch.validate()  # every span holds exactly its item's placeholders
        for modality, media in batch.media.items():
            modalities.add(modality)
            assert media.inputs.shape[0] == len(media.spans) == len(media.keys)
            if modality == "image":
                assert media.inputs.shape[1:] == (3, 32, 32)
                assert all(length == 16 for _, _, length in media.spans)
            assert int((batch.input_ids == media.placeholder_id).sum()) == sum(s[2] for s in media.spans)
        assert int((batch.doc_ids >= 0).sum()) / batch.doc_ids.numel() > 0.5
    assert modalities == {"image", "audio"}
    assert batches[-1][1].reader is not None and batches[-1][1].reader.epoch >= 1  # wrapped into epoch 2


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact(demo_shards: Path, tokenizer: TextTokenizer, workers: int) -> None:
    full = list(itertools.islice(stream(demo_shards, tokenizer, workers).batches(), 14))
    for k in (3, 9):
        state = MediaStreamState.from_dict(full[k - 1][1].as_dict())  # through JSON, as a checkpoint does
        resumed = list(itertools.islice(stream(demo_shards, tokenizer, workers).batches(state), 14 - k))
        assert same(resumed, full[k:]), f"resume after batch {k}"


def test_loss_mask_before_first_media(demo_shards: Path, tokenizer: TextTokenizer) -> None:
    batch, _ = next(stream(demo_shards, tokenizer, loss_on_text_before_first_media=False).batches())
    batch.validate()
    image_start = tokenizer.image_start_id
    for row in range(batch.input_ids.shape[0]):
        for doc in batch.doc_ids[row].unique().tolist():
            if doc < 0:
                continue
            positions = (batch.doc_ids[row] == doc).nonzero().flatten().tolist()
            ids = batch.input_ids[row, positions].tolist()
            if image_start in ids:
                first = positions[ids.index(image_start)]
                assert bool((batch.labels[row, positions[0] : first] == -100).all())


def test_items_too_long_for_seq_len_are_skipped_and_counted(
    demo_shards: Path, tokenizer: TextTokenizer
) -> None:
    reader = ReaderConfig(shards=[str(demo_shards / "shard-*.tar")], shuffle_buffer=0)
    cfg = MediaDataConfig(reader=reader, buffer_docs=8)
    big_images = {
        "image": StandInImageProcessor(size=64, patch=2),
        "audio": StandInAudioProcessor(),
    }  # 1024 tokens
    media_stream = MediaBatchStream(cfg, tokenizer, big_images, seq_len=256, batch_size=2, seed=0)
    batches = list(itertools.islice(media_stream.batches(), 5))
    assert all("image" not in b.media for b, _ in batches)
    assert media_stream.skips.by_reason.get("media_too_long", 0) > 0


def test_mostly_unpackable_media_stops_with_the_reason(demo_shards: Path, tokenizer: TextTokenizer) -> None:
    from mmpretrain.errors import DataFormatError

    reader = ReaderConfig(shards=[str(demo_shards / "shard-*.tar")], shuffle_buffer=0)
    cfg = MediaDataConfig(reader=reader, buffer_docs=8)
    huge = {
        "image": StandInImageProcessor(size=64, patch=2),
        "audio": StandInAudioProcessor(tokens_per_second=500),
    }
    media_stream = MediaBatchStream(cfg, tokenizer, huge, seq_len=256, batch_size=2, seed=0)
    with pytest.raises(DataFormatError, match=r"too many bad records in media documents \(unpackable\)"):
        list(itertools.islice(media_stream.batches(), 200))


def test_media_for_a_model_without_encoders_is_a_config_error(
    demo_shards: Path, tokenizer: TextTokenizer
) -> None:
    cfg = MediaDataConfig(reader=ReaderConfig(shards=[str(demo_shards / "shard-*.tar")]), buffer_docs=8)
    text_only = MediaBatchStream(cfg, tokenizer, {}, seq_len=256, batch_size=2, seed=0)
    with pytest.raises(ConfigError, match="has no encoders and no media tokenizers"):
        next(text_only.batches())
