"""Early fusion on the data side: the vocabulary layout and its id round trip, media segments
as text-like code runs in documents and packed batches, precomputed codes in shards
(`mmpt data build --tokenize-media`), and the config rules."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmpretrain.cli import main
from mmpretrain.config import validate_config
from mmpretrain.data.build.materialize import Materialized, materialize
from mmpretrain.data.build.media_codes import add_codes_to_dataset
from mmpretrain.data.build.options import BuildOptions
from mmpretrain.data.build.records import RecordSegment, SourceRecord
from mmpretrain.data.decoders import DecodedSample, DecodedSegment, decode_sample
from mmpretrain.data.demo_data import build_demo_dataset
from mmpretrain.data.layout import NoLossTokens
from mmpretrain.data.media_pipeline import (
    DocumentLoss,
    MediaBatchStream,
    MediaDataConfig,
    StandInAudioProcessor,
    to_media_document,
)
from mmpretrain.data.media_vocab import (
    Codebook,
    MediaCodes,
    MediaVocabulary,
    load_media_codes,
    tokenizer_fingerprint,
)
from mmpretrain.data.reader import ReaderConfig
from mmpretrain.data.shard_stream import shard_outcomes
from mmpretrain.data.tokenizer import TextTokenizer, train_bpe
from mmpretrain.data.types import IGNORE_INDEX, Sample
from mmpretrain.encoders.media_tokenizer import load_media_tokenizer
from mmpretrain.encoders.vq import VqConfig, VqTokenizer
from mmpretrain.errors import ConfigError, UserError
from mmpretrain.model.config import ModelConfig
from mmpretrain.train.data_setup import tokenizer_for_run

LLM = {"name": "llama", "hidden_size": 32, "num_heads": 4}


def make_vq(out: Path, seed: int = 0, codebook_size: int = 32) -> Path:
    """A random-init 16 px VQ tokenizer (16 codes per image) whose codebook starts at
    encoder outputs, so images get varied codes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = VqConfig(image_size=16, channels=8, res_blocks=0, codebook_size=codebook_size, code_dim=8)
        tokenizer = VqTokenizer(config)
        tokenizer.model.train()
        tokenizer.model(torch.rand(8, 3, 16, 16) * 2 - 1)
        tokenizer.model.eval()
    tokenizer.save(out)
    return out


@pytest.fixture(scope="module")
def vq_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_vq(tmp_path_factory.mktemp("vq") / "vq")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    build_demo_dataset(
        out, samples=24, shards=2, seed=0, kinds_mix={"caption": 0.7, "text": 0.3}, progress=False
    )
    return out


@pytest.fixture(scope="module")
def text_tokenizer(demo: Path) -> TextTokenizer:
    texts = [
        s.text
        for shard in sorted(demo.glob("shard-*.tar"))
        for _, sample in shard_outcomes(str(shard))
        if isinstance(sample, Sample)
        for s in sample.segments
        if s.text
    ]
    return train_bpe(texts * 3, vocab_size=260)


# ---------------------------------------------------------------------------- layout


def test_code_ranges_follow_the_text_ids_in_modality_order() -> None:
    vocab = MediaVocabulary(300, {"image": Codebook("vq", 256), "audio": Codebook("speech_units", 50)})
    assert vocab.modalities == ["audio", "image"]
    assert (vocab.offset("audio"), vocab.offset("image"), vocab.total_size) == (300, 350, 606)
    assert vocab.to_ids("audio", [0, 49]) == [300, 349]
    assert vocab.to_ids("image", [0, 255]) == [350, 605]
    assert [vocab.modality_of(i) for i in (299, 300, 349, 350, 605, 606)] == [
        None,
        "audio",
        "audio",
        "image",
        "image",
        None,
    ]
    assert vocab.code_mask(torch.tensor([0, 299, 300, 605, 606, -100])).tolist() == [
        False,
        False,
        True,
        True,
        False,
        False,
    ]
    with pytest.raises(ValueError, match="outside the codebook"):
        vocab.to_ids("audio", [50])
    with pytest.raises(ValueError, match="not all codes of one modality"):
        vocab.to_codes([300, 350])
    with pytest.raises(ValueError, match="not all codes"):
        vocab.to_codes([5])


def test_ids_round_trip_and_the_layout_saves_as_json(tmp_path: Path) -> None:
    vocab = MediaVocabulary(
        4104,
        {"audio": Codebook("speech_units", 100, "speech_units:ab"), "image": Codebook("vq", 1024, "vq:cd")},
    )
    rng = random.Random(0)
    for modality in ("audio", "image"):
        codes = [rng.randrange(vocab.size(modality)) for _ in range(200)]
        assert vocab.to_codes(vocab.to_ids(modality, codes)) == (modality, codes)
    vocab.save(tmp_path / "media_vocab.json")
    assert MediaVocabulary.load(tmp_path / "media_vocab.json") == vocab
    saved = json.loads((tmp_path / "media_vocab.json").read_text())
    assert saved["codebooks"]["image"]["offset"] == 4204 and saved["total_size"] == 5228
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="not a readable media vocabulary"):
        MediaVocabulary.load(tmp_path / "bad.json")


# ---------------------------------------------------------------------------- documents


class CountingTokenizer:
    """A stand-in media tokenizer: codes from the image's first pixel, calls counted."""

    kind, modality, codebook_size = "vq", "image", 8

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, segment: DecodedSegment) -> list[int]:
        self.calls += 1
        assert segment.image is not None
        red = segment.image.getpixel((0, 0))[0]
        return [red % 8, (red + 1) % 8, (red + 2) % 8]


def image_sample(meta: dict | None = None) -> DecodedSample:
    image = Image.new("RGB", (8, 8), (13, 0, 0))
    segments = [
        DecodedSegment("text", text="look:"),
        DecodedSegment("image", image=image, meta=meta or {}),
        DecodedSegment("text", text=" a red square"),
    ]
    return DecodedSample("k0", "test", segments)


def stand_in_codes(
    tokenizer: TextTokenizer, fingerprint: str = "vq:x"
) -> tuple[MediaCodes, CountingTokenizer]:
    stub = CountingTokenizer()
    vocab = MediaVocabulary(tokenizer.vocab_size, {"image": Codebook("vq", 8, fingerprint)})
    codes = MediaCodes(
        vocab, {"image": stub}, {"image": tokenizer.image_start_id}, {"image": tokenizer.image_end_id}
    )
    return codes, stub


def test_a_media_segment_becomes_a_text_like_code_run(text_tokenizer: TextTokenizer) -> None:
    codes, stub = stand_in_codes(text_tokenizer)
    document = to_media_document(image_sample(), text_tokenizer, {}, codes)
    run = document.parts[1]
    offset = codes.vocab.offset("image")
    assert run == [
        text_tokenizer.image_start_id,
        offset + 5,
        offset + 6,
        offset + 7,
        text_tokenizer.image_end_id,
    ]
    assert type(run) is list  # trained on like text
    assert codes.vocab.to_codes(run[1:-1]) == ("image", [5, 6, 7])
    assert document.count("image") == 0  # no media item: nothing for an encoder
    silent = to_media_document(image_sample(), text_tokenizer, {}, codes, DocumentLoss(media_codes=False))
    assert isinstance(silent.parts[1], NoLossTokens) and silent.parts[1] == run
    prompt = to_media_document(
        image_sample(), text_tokenizer, {}, codes, DocumentLoss(text_before_first_media=False)
    )
    assert isinstance(prompt.parts[0], NoLossTokens) and type(prompt.parts[2]) is list
    assert stub.calls == 3
    with pytest.raises(KeyError):  # audio has neither a media tokenizer nor a processor
        to_media_document(
            DecodedSample(
                "k1", "t", [DecodedSegment("audio", audio=torch.zeros(160).numpy(), sample_rate=16000)]
            ),
            text_tokenizer,
            {},
            codes,
        )
    speech = to_media_document(
        DecodedSample(
            "k1", "t", [DecodedSegment("audio", audio=torch.zeros(16000).numpy(), sample_rate=16000)]
        ),
        text_tokenizer,
        {"audio": StandInAudioProcessor()},
        codes,
    )
    assert speech.count("audio") == 1  # a modality can keep its encoder next to another's codes


def test_stored_codes_are_used_only_from_the_same_tokenizer(text_tokenizer: TextTokenizer) -> None:
    codes, stub = stand_in_codes(text_tokenizer, fingerprint="vq:same")
    offset = codes.vocab.offset("image")
    stored = {"codes": {"tokenizer": "vq:same", "codes": [1, 1, 2, 3]}}
    document = to_media_document(image_sample(stored), text_tokenizer, {}, codes)
    assert document.parts[1][1:-1] == [offset + 1, offset + 1, offset + 2, offset + 3]
    assert (stub.calls, codes.counts["stored"]) == (0, 1)
    other = {"codes": {"tokenizer": "vq:other", "codes": [1, 1, 2, 3]}}
    document = to_media_document(image_sample(other), text_tokenizer, {}, codes)
    assert document.parts[1][1:-1] == [offset + 5, offset + 6, offset + 7]
    assert (stub.calls, codes.counts["encoded"]) == (1, 1)
    broken = {"codes": {"tokenizer": "vq:same", "codes": [9]}}
    with pytest.raises(UserError, match=r"k0.*outside the codebook"):
        to_media_document(image_sample(broken), text_tokenizer, {}, codes)


def test_packed_batches_carry_codes_as_tokens_with_loss(
    demo: Path, vq_dir: Path, text_tokenizer: TextTokenizer
) -> None:
    codes = load_media_codes(validate_media({"image": {"name": "vq", "path": str(vq_dir)}}), text_tokenizer)
    assert codes is not None and codes.vocab.total_size == text_tokenizer.vocab_size + 32
    cfg = MediaDataConfig(reader=ReaderConfig(shards=[str(demo / "shard-*.tar")]), buffer_docs=16)
    stream = MediaBatchStream(cfg, text_tokenizer, {}, seq_len=128, batch_size=2, seed=0, codes=codes)
    batch, _ = next(stream.batches())
    batch.validate()
    assert batch.media == {}
    is_code = codes.vocab.code_mask(batch.input_ids)
    assert int(is_code.sum()) % 16 == 0 and int(is_code.sum()) >= 16  # 16 codes per 16 px image
    starts = batch.input_ids == text_tokenizer.image_start_id
    assert int(starts.sum()) == int(is_code.sum()) // 16
    assert torch.equal(batch.labels[is_code], batch.input_ids[is_code])  # loss on codes
    silent = MediaBatchStream(
        cfg.model_copy(update={"loss_on_media_codes": False}),
        text_tokenizer,
        {},
        seq_len=128,
        batch_size=2,
        seed=0,
        codes=codes,
    )
    quiet, _ = next(silent.batches())
    assert torch.equal(quiet.input_ids, batch.input_ids)
    assert (quiet.labels[codes.vocab.code_mask(quiet.input_ids)] == IGNORE_INDEX).all()
    assert (quiet.labels != IGNORE_INDEX).sum() > 0  # the captions still train


# ---------------------------------------------------------------------------- precomputed codes


def test_demo_build_stores_the_codes_training_would_compute(
    tmp_path: Path, vq_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "coded"
    argv = ["data", "build", "--format", "demo", "--out", str(out), "--samples", "6", "--shards", "1"]
    assert main([*argv, "--tokenize-media", str(vq_dir)]) == 0
    assert "media codes stored (early fusion): image" in capsys.readouterr().out
    index = json.loads((out / "index.json").read_text())
    assert index["media_codes"]["tokenizers"]["image"]["fingerprint"] == tokenizer_fingerprint(vq_dir)
    assert index["bytes"] == (out / "shard-000000.tar").stat().st_size
    tokenizer = load_media_tokenizer(vq_dir)
    images = 0
    for shard in [out / "shard-000000.tar", out / "heldout" / "shard-000000.tar"]:
        for _, sample in shard_outcomes(str(shard)):
            assert isinstance(sample, Sample)
            for segment in decode_sample(sample).segments:
                if segment.kind == "image":
                    images += 1
                    stored = segment.meta["codes"]
                    assert stored["tokenizer"] == tokenizer_fingerprint(vq_dir)
                    assert stored["codes"] == tokenizer.encode(segment)
    assert images >= 4
    assert main([*argv, "--overwrite", "--tokenize-media", str(tmp_path / "nope")]) == 2
    assert "not a media tokenizer directory" in capsys.readouterr().err


def test_materialize_stores_codes_and_a_retrained_tokenizer_is_not_trusted(
    tmp_path: Path, vq_dir: Path
) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (0, 90, 200)).save(buffer, format="PNG")
    record = SourceRecord(
        "r0",
        "in.jsonl:1",
        (RecordSegment("image", data=buffer.getvalue()), RecordSegment("text", text="blue")),
    )
    options = BuildOptions(input=tmp_path, out=tmp_path / "out", tokenize_media=(("image", str(vq_dir)),))
    built = materialize(record, options)
    assert isinstance(built, Materialized)
    image = built.sample.segments[0]
    decoded = decode_sample(built.sample).segments[0]
    assert image.meta["codes"]["codes"] == load_media_tokenizer(vq_dir).encode(decoded)
    other = make_vq(tmp_path / "vq2", seed=1)  # same shape, other weights: another fingerprint
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(vq_dir)
    text = train_bpe(["blue red green"] * 50, vocab_size=260)
    codes = load_media_codes(validate_media({"image": {"name": "vq", "path": str(other)}}), text)
    assert codes is not None
    to_media_document(decode_sample(built.sample), text, {}, codes)
    assert codes.counts == {"encoded": 1}


def test_add_codes_to_dataset_counts_segments(tmp_path: Path, vq_dir: Path) -> None:
    out = tmp_path / "d"
    build_demo_dataset(out, samples=4, shards=1, seed=1, kinds_mix={"caption": 1.0}, progress=False)
    record = add_codes_to_dataset(out, {"image": str(vq_dir)})
    assert record["segments"] == {"image": 5}  # 4 training + 1 held-out caption images


# ---------------------------------------------------------------------------- config


def validate_media(media: dict) -> dict:
    return validate_config(ModelConfig, {"llm": LLM, "media_tokenizers": media}, "test").media_tokenizers


def test_a_modality_takes_an_encoder_or_a_media_tokenizer_not_both() -> None:
    encoder = {
        "vision": {"name": "hf_siglip", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_heads": 2}
    }
    both = {
        "llm": LLM,
        "encoders": encoder,
        "connectors": {"image": {"name": "mlp"}},
        "media_tokenizers": {"image": {"name": "vq", "path": "runs/vq"}},
    }
    with pytest.raises(ConfigError, match="either early fusion or an encoder"):
        validate_config(ModelConfig, both, "test")
    mixed = {**both, "media_tokenizers": {"audio": {"name": "speech_units", "path": "runs/units"}}}
    assert set(validate_config(ModelConfig, mixed, "test").media_tokenizers) == {"audio"}
    with pytest.raises(ConfigError, match="bpe is a text tokenizer"):
        validate_media({"image": {"name": "bpe"}})
    with pytest.raises(ConfigError, match="keyed by modality"):
        validate_media({"video": {"name": "vq", "path": "x"}})


def test_a_media_tokenizer_as_data_tokenizer_is_one_clear_error(tmp_path: Path, vq_dir: Path) -> None:
    from mmpretrain.data.data_config import DataConfig

    data = validate_config(
        DataConfig,
        {"sources": [{"format": "shakespeare"}], "tokenizer": {"name": "vq", "path": str(vq_dir)}},
        "test",
    )
    with pytest.raises(ConfigError, match=r"put it under model\.media_tokenizers"):
        tokenizer_for_run(data, tmp_path)
    text = train_bpe(["a b c"] * 50, vocab_size=256)
    with pytest.raises(ConfigError, match="tokenizes image, not audio"):
        load_media_codes(validate_media({"audio": {"name": "vq", "path": str(vq_dir)}}), text)
