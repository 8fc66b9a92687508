"""speech_units: torch k-means (recovers clusters, deterministic given the seed), run-length
dedup, the tokenizer's save/load round trip (random-init and local pretrained encoders),
and `mmpt tokenizer train --kind speech_units` on demo speech shards."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from mmpretrain.cli import main
from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.data.demo_data import build_demo_dataset
from mmpretrain.encoders.kmeans import fit_kmeans, nearest_centroid
from mmpretrain.encoders.media_tokenizer import MediaTokenizer, load_media_tokenizer
from mmpretrain.encoders.speech_units import (
    SpeechUnitsConfig,
    SpeechUnitsTokenizerConfig,
    SpeechUnitTokenizer,
    dedup_runs,
)
from mmpretrain.errors import ConfigError, UserError
from mmpretrain.registry import TOKENIZERS

TINY_HUBERT: dict[str, Any] = {
    "name": "hf_hubert",
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_size": 64,
    "conv_dim": [16, 16, 16],
    "conv_kernel": [10, 8, 8],
    "conv_stride": [5, 8, 8],  # 320 samples = 20 ms per frame
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    "feature_layer": 1,
}
TINY_WHISPER: dict[str, Any] = {
    "name": "hf_whisper",
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_size": 64,
    "max_source_positions": 50,  # window: 100 mel frames = 1 s
    "feature_layer": -2,
}
SHIPPED = "tokenizers/speech_units_tiny"


def clip(seconds: float, seed: int = 0) -> DecodedSegment:
    """A chirp plus noise: features that change over time, so units vary."""
    t = np.arange(int(16000 * seconds)) / 16000
    wave = 0.3 * np.sin(2 * np.pi * (200 + 400 * t) * t) + 0.05 * np.random.default_rng(seed).standard_normal(
        len(t)
    )
    return DecodedSegment("audio", audio=wave.astype(np.float32), sample_rate=16000)


def fitted(encoder: dict[str, Any], k: int = 8, seed: int = 0, dedup: bool = True) -> SpeechUnitTokenizer:
    """A tokenizer whose centroids are fitted on the frames of two synthetic clips."""
    config = SpeechUnitsConfig.model_validate({"encoder": encoder, "k": k, "seed": seed, "dedup": dedup})
    tokenizer = SpeechUnitTokenizer.create(config)
    frames = torch.cat([tokenizer.frame_features(clip(1.5, s)) for s in (1, 2)])
    tokenizer.centroids = fit_kmeans(frames, k, seed).centroids
    return tokenizer


# ---------------------------------------------------------------------------- k-means


def blobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Five well-separated Gaussian clusters in 8-D (centres 20 apart, std 0.5)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(5, 8) * 20.0
    truth = torch.arange(5).repeat_interleave(60)
    points = centres[truth] + 0.5 * torch.randn(len(truth), 8, generator=g)
    return points, truth, centres


def test_kmeans_recovers_well_separated_clusters() -> None:
    points, truth, centres = blobs()
    result = fit_kmeans(points, 5, seed=0)
    labels, _ = nearest_centroid(points, result.centroids)
    assert result.converged and result.iterations < 20
    # each true cluster is exactly one fitted cluster, and the centroids sit on the centres
    mapping = {int(t): {int(label) for label in labels[truth == t]} for t in range(5)}
    assert all(len(m) == 1 for m in mapping.values())
    assert len({next(iter(m)) for m in mapping.values()}) == 5
    for t, m in mapping.items():
        assert torch.allclose(result.centroids[next(iter(m))], centres[t], atol=0.3)
    assert result.inertia == pytest.approx(float(((points - centres[truth]) ** 2).sum()), rel=0.05)


def test_kmeans_is_deterministic_given_the_seed() -> None:
    points = torch.randn(2000, 16, generator=torch.Generator().manual_seed(3))  # no structure
    first, again = fit_kmeans(points, 50, seed=7), fit_kmeans(points, 50, seed=7)
    other = fit_kmeans(points, 50, seed=8)
    assert torch.equal(first.centroids, again.centroids) and first.inertia == again.inertia
    assert not torch.equal(first.centroids, other.centroids)


def test_kmeans_with_fewer_distinct_points_than_k_reseeds_empty_clusters() -> None:
    points = torch.tensor([[0.0, 0.0], [5.0, 5.0], [9.0, 0.0]]).repeat(20, 1)
    result = fit_kmeans(points, 5, seed=0, max_iter=5)
    assert result.centroids.shape == (5, 2) and torch.isfinite(result.centroids).all()
    assert result.reseeded > 0 and result.inertia == 0.0
    assert torch.equal(result.centroids, fit_kmeans(points, 5, seed=0, max_iter=5).centroids)


def test_kmeans_needs_at_least_k_points() -> None:
    with pytest.raises(UserError, match="at least k=50 points"):
        fit_kmeans(torch.randn(10, 4), 50, seed=0)


@pytest.mark.parametrize(
    ("units", "expected"),
    [([], []), ([3], [3]), ([5, 5, 5, 9, 9, 5], [5, 9, 5]), ([1, 2, 3], [1, 2, 3]), ([0, 0, 0, 0], [0])],
)
def test_dedup_runs(units: list[int], expected: list[int]) -> None:
    assert dedup_runs(units) == expected


# ---------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("encoder", [TINY_HUBERT, TINY_WHISPER], ids=lambda e: e["name"])
def test_save_load_gives_identical_units(encoder: dict[str, Any], tmp_path: Path) -> None:
    tokenizer = fitted(encoder)
    assert isinstance(tokenizer, MediaTokenizer) and tokenizer.codebook_size == 8
    audio = clip(2.5, seed=9)  # longer than tiny Whisper's 1 s window: encoded in pieces
    frames = tokenizer.frame_units(audio)
    units = tokenizer.encode(audio)
    # 20 ms frames: HuBERT's conv stack gives (40000 - 400) // 320 + 1, Whisper ceil(250 / 2)
    assert len(frames) == {"hf_hubert": 124, "hf_whisper": 125}[encoder["name"]]
    assert units == dedup_runs(frames) and len(set(units)) > 1
    assert all(0 <= u < 8 for u in frames)
    tokenizer.save(tmp_path / "tok")
    loaded = load_media_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, SpeechUnitTokenizer)
    assert loaded.encode(audio) == units and loaded.frame_units(audio) == frames
    manifest = json.loads((tmp_path / "tok" / "media_tokenizer.json").read_text())
    assert (manifest["kind"], manifest["modality"], manifest["codebook_size"]) == ("speech_units", "audio", 8)


def test_dedup_off_gives_one_unit_per_frame() -> None:
    tokenizer = fitted(TINY_HUBERT, dedup=False)
    audio = clip(1.0)
    assert tokenizer.encode(audio) == tokenizer.frame_units(audio)
    assert len(tokenizer.encode(audio)) == 49  # (16000 - 400) // 320 + 1


def test_pretrained_encoder_is_saved_with_the_tokenizer(tmp_path: Path) -> None:
    """Weights loaded from a local `pretrained` directory travel in model.safetensors: the
    loaded tokenizer gives the same units after that directory is gone."""
    source = fitted(TINY_HUBERT, seed=5)
    source.encoder.model.save_pretrained(tmp_path / "hubert")
    encoder = {"name": "hf_hubert", "pretrained": str(tmp_path / "hubert"), "feature_layer": 1}
    config = SpeechUnitsConfig.model_validate({"encoder": encoder, "k": 8, "seed": 0})
    tokenizer = SpeechUnitTokenizer.create(config)
    tokenizer.centroids = source.centroids
    audio = clip(1.2, seed=4)
    assert tokenizer.encode(audio) == source.encode(audio)  # same weights as the source
    tokenizer.save(tmp_path / "tok")
    shutil.rmtree(tmp_path / "hubert")
    assert load_media_tokenizer(tmp_path / "tok").encode(audio) == source.encode(audio)


def test_registry_builds_from_a_directory(tmp_path: Path) -> None:
    fitted(TINY_HUBERT).save(tmp_path / "tok")
    built = TOKENIZERS.build(SpeechUnitsTokenizerConfig(name="speech_units", path=str(tmp_path / "tok")))
    assert isinstance(built, SpeechUnitTokenizer) and built.codebook_size == 8
    with pytest.raises(ConfigError, match="path is not set"):
        TOKENIZERS.build(SpeechUnitsTokenizerConfig(name="speech_units"))


def test_a_directory_without_weights_is_a_user_error(tmp_path: Path) -> None:
    fitted(TINY_HUBERT).save(tmp_path / "tok")
    (tmp_path / "tok" / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"cannot read .*model\.safetensors"):
        load_media_tokenizer(tmp_path / "tok")


# ---------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def speech_shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("speech")
    build_demo_dataset(out, samples=6, shards=1, seed=0, kinds_mix={"spoken_sentence": 1.0}, progress=False)
    return str(out / "shard-*.tar")


@pytest.fixture(scope="module")
def trained(speech_shards: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("units") / "tok"
    argv = ["tokenizer", "train", "--kind", "speech_units", "--input", speech_shards, "--out", str(out)]
    assert main([*argv, "--config", SHIPPED]) == 0
    return out


def test_cli_fit_writes_a_loadable_tokenizer(trained: Path, speech_shards: str) -> None:
    assert {p.name for p in trained.iterdir()} == {"media_tokenizer.json", "model.safetensors", "fit.json"}
    report = json.loads((trained / "fit.json").read_text())
    assert report["k"] == 50 and report["clips"] == 6 and report["frames"] >= 50
    assert report["frames"] == report["frames_fitted"]
    assert 49 < report["units_per_second"] <= 50  # 20 ms frames
    assert 0 < report["units_per_second_dedup"] <= report["units_per_second"]
    assert report["inertia"] > 0 and report["seconds"] > 0
    tokenizer = load_media_tokenizer(trained)
    assert isinstance(tokenizer, SpeechUnitTokenizer) and tokenizer.codebook_size == 50
    audio = clip(1.0)
    units = tokenizer.encode(audio)
    assert units and all(0 <= u < 50 for u in units)
    assert load_media_tokenizer(trained).encode(audio) == units


def test_cli_fit_is_deterministic_given_the_seed(trained: Path, speech_shards: str, tmp_path: Path) -> None:
    shipped = yaml.safe_load((Path(__file__).parents[2] / "configs" / f"{SHIPPED}.yaml").read_text())
    runs = {}
    for seed in (0, 1):
        config = tmp_path / f"seed{seed}.yaml"
        config.write_text(yaml.safe_dump({**shipped, "seed": seed}), encoding="utf-8")
        argv = ["--kind", "speech_units", "--input", speech_shards, "--config", str(config)]
        assert main(["tokenizer", "train", *argv, "--out", str(tmp_path / str(seed))]) == 0
        runs[seed] = load_file(str(tmp_path / str(seed) / "model.safetensors"))
    first = load_file(str(trained / "model.safetensors"))
    assert first.keys() == runs[0].keys() == runs[1].keys()
    assert all(torch.equal(first[name], runs[0][name]) for name in first)  # encoder and centroids
    assert not torch.equal(first["centroids"], runs[1]["centroids"])
    audio = clip(2.0, seed=3)
    units = load_media_tokenizer(trained).encode(audio)
    assert load_media_tokenizer(tmp_path / "0").encode(audio) == units
    assert load_media_tokenizer(tmp_path / "1").encode(audio) != units


def test_list_tokenizers_shows_speech_units(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "tokenizers"]) == 0
    assert "speech_units" in capsys.readouterr().out


def _train(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["tokenizer", "train", "--kind", "speech_units", *argv])
    out, err = capsys.readouterr()
    assert out == ""
    return code, err


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"k": 1}, r"config error in .*: k: Input should be greater than or equal to 2"),
        ({"kk": 50}, r"kk: unknown key"),
        ({"encoder": {"name": "hf_wav2vec2"}}, r"encoder"),
        ({"fit": {"max_iter": 0}}, r"fit\.max_iter: Input should be greater than or equal to 1"),
    ],
)
def test_bad_config_exits_2_with_one_line(
    config: dict[str, Any], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {"encoder": TINY_HUBERT, "k": 50, **config}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    code, err = _train(capsys, "--input", "x.tar", "--config", str(path), "--out", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1
    assert re.search(message, err), err
    assert not (tmp_path / "o").exists()


def test_input_errors_exit_2_with_one_line(
    speech_shards: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _train(capsys, "--input", str(tmp_path / "none-*.tar"), "--out", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1 and "matches no files" in err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    code, err = _train(capsys, "--input", speech_shards, "--out", str(tmp_path / "full"))
    assert code == 2 and err.count("\n") == 1 and "--overwrite" in err
    images = tmp_path / "images"
    build_demo_dataset(images, samples=2, shards=1, seed=0, kinds_mix={"caption": 1.0}, progress=False)
    code, err = _train(capsys, "--input", str(images / "shard-*.tar"), "--out", str(tmp_path / "o"))
    assert code == 2 and "holds no decodable audio segments" in err.splitlines()[-1]


def test_vocab_size_sets_k(speech_shards: str, tmp_path: Path) -> None:
    argv = ["tokenizer", "train", "--kind", "speech_units", "--input", speech_shards, "--vocab-size", "64"]
    assert main([*argv, "--out", str(tmp_path / "tok")]) == 0  # the shipped tiny config, k = 64
    assert json.loads((tmp_path / "tok" / "fit.json").read_text())["k"] == 64
    assert load_media_tokenizer(tmp_path / "tok").codebook_size == 64
