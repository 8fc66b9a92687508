"""Early fusion end to end: the vocabulary extension of the LLM (mean rows, old logits kept),
a tiny early-fusion model training on demo shards with the loss on media codes falling, a
text-only checkpoint extended with `train.init_from`, and resume checks of the layout."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from mmpretrain.config import load_config, validate_config
from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.data.demo_data import build_demo_dataset
from mmpretrain.data.media_vocab import Codebook, MediaVocabulary
from mmpretrain.encoders.kmeans import fit_kmeans
from mmpretrain.encoders.speech_units import SpeechUnitsConfig, SpeechUnitTokenizer
from mmpretrain.encoders.vq import VqConfig, VqTokenizer
from mmpretrain.errors import UserError
from mmpretrain.model.build import build_model
from mmpretrain.model.config import ModelConfig
from mmpretrain.model.extend_vocab import resize_vocabulary, text_rows
from mmpretrain.train.checkpoint import latest_checkpoint
from mmpretrain.train.init_from import init_model_from, resolve_init_checkpoint, row_sources
from mmpretrain.train.loop import train
from mmpretrain.train.metrics import read_metrics

LLM: dict[str, Any] = {
    "name": "llama",
    "vocab_size": 320,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "max_position_embeddings": 512,
}
TINY_HUBERT: dict[str, Any] = {
    "name": "hf_hubert",
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_size": 64,
    "conv_dim": [16, 16, 16],
    "conv_kernel": [10, 8, 8],
    "conv_stride": [5, 8, 8],
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    "feature_layer": 1,
}


def chirp(seconds: float, seed: int) -> DecodedSegment:
    t = np.arange(int(16000 * seconds)) / 16000
    noise = 0.05 * np.random.default_rng(seed).standard_normal(len(t))
    wave = 0.3 * np.sin(2 * np.pi * (200 + 400 * t) * t) + noise
    return DecodedSegment("audio", audio=wave.astype(np.float32), sample_rate=16000)


@pytest.fixture(scope="module")
def media_tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Random-init tiny tokenizers: a 16 px VQ (16 codes per image, 32 codes) and speech units
    (k = 16) with centroids fitted on two synthetic clips."""
    root = tmp_path_factory.mktemp("media_tokenizers")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vq = VqTokenizer(VqConfig(image_size=16, channels=8, res_blocks=0, codebook_size=32, code_dim=8))
        vq.model.train()
        vq.model(torch.rand(8, 3, 16, 16) * 2 - 1)  # the codebook starts at encoder outputs
        vq.model.eval()
    vq.save(root / "vq")
    units = SpeechUnitTokenizer.create(SpeechUnitsConfig.model_validate({"encoder": TINY_HUBERT, "k": 16}))
    units.centroids = fit_kmeans(
        torch.cat([units.frame_features(chirp(1.5, s)) for s in (1, 2)]), 16, 0
    ).centroids
    units.save(root / "units")
    return {
        "image": {"name": "vq", "path": str(root / "vq")},
        "audio": {"name": "speech_units", "path": str(root / "units")},
    }


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Demo shards with images, speech and text, and text-only ones for the text run."""
    root = tmp_path_factory.mktemp("demo")
    mix = {"caption": 0.45, "spoken_sentence": 0.2, "text": 0.35}
    build_demo_dataset(root / "mixed", samples=60, shards=2, seed=0, kinds_mix=mix, progress=False)
    build_demo_dataset(root / "text", samples=80, shards=2, seed=1, kinds_mix={"text": 1.0}, progress=False)
    return {"mixed": root / "mixed", "text": root / "text"}


def run_config(tmp: Path, name: str, **sections: dict[str, Any]) -> Path:
    config: dict[str, Any] = {
        "model": {"llm": LLM},
        "train": {"max_steps": 20, "batch_size": 2, "seq_len": 256, "log_every": 1, "save_every": 10},
        "optim": {"lr": 1e-2, "warmup_steps": 2},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def fusion_data(shards: dict[str, Path], tokenizer: Path) -> dict[str, Any]:
    return {
        "shards": {"reader": {"shards": [str(shards["mixed"] / "shard-*.tar")]}, "buffer_docs": 32},
        "tokenizer": {"name": "bpe", "path": str(tokenizer)},
    }


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory, shards: dict[str, Path]) -> Path:
    """A text-only run (its BPE trained on the text shards into its run directory)."""
    tmp = tmp_path_factory.mktemp("text_run")
    data = {"sources": [{"format": "shards", "paths": [str(shards["text"] / "shard-*.tar")]}]}
    config = run_config(tmp, "text", data={**data, "tokenizer": {"name": "bpe", "vocab_size": 280}})
    train(load_config(config), tmp / "run")
    return tmp / "run"


@pytest.fixture(scope="module")
def fusion_run(
    tmp_path_factory: pytest.TempPathFactory,
    shards: dict[str, Path],
    media_tokenizers: dict[str, Any],
    text_run: Path,
) -> Path:
    """An early-fusion run from random init on the mixed shards."""
    tmp = tmp_path_factory.mktemp("fusion_run")
    model = {"llm": LLM, "media_tokenizers": media_tokenizers}
    config = run_config(tmp, "fusion", model=model, data=fusion_data(shards, text_run / "tokenizer"))
    train(load_config(config), tmp / "run", argv=["test"])
    return tmp / "run"


# ---------------------------------------------------------------------------- the model


def tiny_llm(**extra: Any) -> Any:
    cfg = validate_config(ModelConfig, {"llm": {**LLM, "vocab_size": 40, **extra}}, "test")
    torch.manual_seed(0)
    return build_model(cfg).llm.eval()


@pytest.mark.parametrize("tied", [False, True])
def test_new_rows_start_at_the_mean_and_old_logits_stay(tied: bool) -> None:
    llm = tiny_llm(tie_word_embeddings=tied)
    ids = torch.tensor([[1, 5, 7, 30, 2]])
    before = llm(input_ids=ids).logits
    old_in = llm.get_input_embeddings().weight.detach().clone()
    old_out = llm.get_output_embeddings().weight.detach().clone()
    resize_vocabulary(llm, text_rows(text_size=34, old_rows=40, new_size=60))
    new_in, new_out = llm.get_input_embeddings().weight, llm.get_output_embeddings().weight
    assert new_in.shape == (60, 32) and llm.config.vocab_size == 60
    assert torch.equal(new_in[:34], old_in[:34])  # old rows unchanged
    assert torch.allclose(new_in[34:], old_in[:34].mean(0).expand(26, -1))  # new rows = mean
    assert torch.equal(new_out[:34], old_out[:34])
    assert torch.allclose(new_out[34:], old_out[:34].mean(0).expand(26, -1))
    assert (new_out is new_in) == tied
    after = llm(input_ids=ids).logits
    assert torch.allclose(after[..., :34], before[..., :34], atol=1e-6)  # logits of old tokens


def test_a_pretrained_text_llm_is_extended_to_the_media_codes(tmp_path: Path) -> None:
    llm = tiny_llm()
    llm.save_pretrained(tmp_path / "text_llm")
    vocab = MediaVocabulary(36, {"audio": Codebook("speech_units", 8), "image": Codebook("vq", 16)})
    cfg = validate_config(
        ModelConfig, {"llm": {"name": "llama", "pretrained": str(tmp_path / "text_llm")}}, "t"
    )
    extended: Any = build_model(cfg, vocab).llm
    table = extended.get_input_embeddings().weight
    assert table.shape[0] == vocab.total_size == 60
    assert torch.equal(table[:36], llm.get_input_embeddings().weight[:36])
    assert torch.allclose(table[36:], llm.get_input_embeddings().weight[:36].mean(0).expand(24, -1))
    scratch = validate_config(ModelConfig, {"llm": LLM}, "t")
    sized: Any = build_model(scratch, vocab).llm
    assert sized.get_input_embeddings().num_embeddings == 60  # random init: sized to the vocabulary


def test_rows_map_by_id_between_layouts() -> None:
    old = MediaVocabulary(10, {"image": Codebook("vq", 4, "vq:a")})
    new = MediaVocabulary(
        10, {"audio": Codebook("speech_units", 3, "su:b"), "image": Codebook("vq", 4, "vq:a")}
    )
    assert row_sources(old, new, 14, 17) == [*range(10), None, None, None, 10, 11, 12, 13]
    retrained = MediaVocabulary(10, {"image": Codebook("vq", 4, "vq:other")})
    assert row_sources(old, retrained, 14, 14) == [*range(10), None, None, None, None]
    assert row_sources(None, new, 320, 17) == [*range(10), *[None] * 7]  # a text-only checkpoint
    with pytest.raises(UserError, match="text vocabulary has 10 ids"):
        row_sources(old, MediaVocabulary(12, {}), 14, 12)


# ---------------------------------------------------------------------------- training


def test_early_fusion_trains_and_the_loss_on_media_codes_falls(fusion_run: Path) -> None:
    records = read_metrics(fusion_run)
    assert len(records) == 20
    media = [r["loss_media_codes"] for r in records if "loss_media_codes" in r]  # a step may be all text
    text = [r["loss_text"] for r in records]
    assert len(media) >= 12
    assert sum(media[-5:]) / 5 < sum(media[:5]) / 5 - 0.8, media
    assert sum(text[-5:]) / 5 < sum(text[:5]) / 5 - 0.8, text
    for r in records:  # the loss lies between its parts
        parts = [r[k] for k in ("loss_media_codes", "loss_text") if k in r]
        assert min(parts) - 1e-6 <= r["loss"] <= max(parts) + 1e-6
    vocab = MediaVocabulary.load(fusion_run / "media_vocab.json")
    assert vocab.modalities == ["audio", "image"] and vocab.total_size == vocab.text_size + 48
    checkpoint = latest_checkpoint(fusion_run)
    assert checkpoint is not None
    saved = json.loads((checkpoint / "state.json").read_text())["media_vocab"]
    assert MediaVocabulary.from_dict(saved) == vocab
    assert math.isclose(media[0], math.log(vocab.total_size), abs_tol=0.5)  # random init: ~ln V


def test_resume_refuses_a_changed_media_vocabulary(fusion_run: Path) -> None:
    saved = fusion_run / "media_vocab.json"
    original = saved.read_text()
    data = json.loads(original)
    data["codebooks"]["image"]["fingerprint"] = "vq:retrained"
    saved.write_text(json.dumps(data))
    config: Any = load_config(fusion_run / "config.yaml")
    try:
        with pytest.raises(UserError, match="vocabulary changed since the run started"):
            train(config, fusion_run, resume=True)
    finally:
        saved.write_text(original)


def test_a_text_only_checkpoint_extends_without_starting_over(
    tmp_path: Path,
    shards: dict[str, Path],
    media_tokenizers: dict[str, Any],
    text_run: Path,
    fusion_run: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text_last = read_metrics(text_run)[-1]["loss"]
    model = {"llm": LLM, "media_tokenizers": media_tokenizers}
    data = fusion_data(shards, text_run / "tokenizer")
    data["tokenizer"] = {"name": "bpe", "vocab_size": 280}  # no path: the init run's tokenizer is reused
    config = run_config(
        tmp_path, "init", model=model, data=data, train={"init_from": str(text_run), "max_steps": 3}
    )
    train(load_config(config), tmp_path / "run")
    assert "initialised the model from" in capsys.readouterr().out
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").read_text() == (
        text_run / "tokenizer" / "tokenizer.json"
    ).read_text()
    first = read_metrics(tmp_path / "run")[0]
    scratch = read_metrics(fusion_run)[0]
    assert first["loss_text"] < scratch["loss_text"] - 1.0  # not back at ln(V)
    assert abs(first["loss_text"] - text_last) < 1.0, (first, text_last)
    assert first["loss_media_codes"] > first["loss_text"]  # codes are new: about ln of their share


def test_resume_continues_an_early_fusion_run_exactly(tmp_path: Path, fusion_run: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(fusion_run, copy)
    shutil.rmtree(copy / "checkpoints" / "step_0000020")  # as if it had stopped after step 10
    train(load_config(copy / "config.yaml"), copy, resume=True)
    assert [r["loss"] for r in read_metrics(copy)] == [r["loss"] for r in read_metrics(fusion_run)]
    assert [r.get("loss_media_codes") for r in read_metrics(copy)] == [
        r.get("loss_media_codes") for r in read_metrics(fusion_run)
    ]


def test_init_from_errors_are_one_clear_line(tmp_path: Path, text_run: Path) -> None:
    with pytest.raises(UserError, match="neither a committed checkpoint nor a run directory"):
        resolve_init_checkpoint(tmp_path)
    wider = validate_config(ModelConfig, {"llm": {**LLM, "hidden_size": 64}}, "test")
    checkpoint = resolve_init_checkpoint(text_run)
    with pytest.raises(UserError, match="architectures differ"):
        init_model_from(checkpoint, build_model(wider), None)


def test_native_export_of_an_early_fusion_run_reloads_with_its_vocabulary(
    tmp_path: Path, fusion_run: Path
) -> None:
    """`mmpt export --to safetensors` of an early-fusion run: `from_pretrained` rebuilds the
    extended vocabulary (text + code rows) and loads exactly the trained weights; the eval
    loader reads the export too."""
    from mmpretrain.cli import main
    from mmpretrain.eval.model_io import load_for_eval
    from mmpretrain.export.gather import read_checkpoint_tensors
    from mmpretrain.model.multimodal import MultimodalLM

    out = tmp_path / "native"
    assert main(["export", str(fusion_run), "--to", "safetensors", "--out", str(out)]) == 0
    vocab = MediaVocabulary.load(fusion_run / "media_vocab.json")
    assert MediaVocabulary.load(out / "media_vocab.json") == vocab
    model = MultimodalLM.from_pretrained(str(out))
    assert model.llm.get_input_embeddings().num_embeddings == vocab.total_size
    checkpoint = latest_checkpoint(fusion_run)
    assert checkpoint is not None
    trained = read_checkpoint_tensors(checkpoint)
    state = model.state_dict()
    assert set(trained) == set(state)
    for name, tensor in trained.items():
        assert torch.equal(state[name], tensor), name
    loaded = load_for_eval(out)
    assert loaded.model.llm.get_input_embeddings().num_embeddings == vocab.total_size
