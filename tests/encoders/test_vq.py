"""vq: the VQ-VAE image tokenizer (round trip, EMA codebook math, code restarts), its
save/load directory, the training loop lowering held-out reconstruction error, and
`mmpt tokenizer train --kind vq` / `mmpt tokenizer decode`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from filelock import FileLock
from PIL import Image

from mmpretrain.cli import main
from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.data.demo_data import build_demo_dataset
from mmpretrain.encoders.media_tokenizer import MediaTokenizer, load_media_tokenizer
from mmpretrain.encoders.vq import VqConfig, VqTokenizer, VqTokenizerConfig, VqVae
from mmpretrain.errors import ConfigError, UserError
from mmpretrain.registry import TOKENIZERS
from mmpretrain.train.checkpoint import latest_checkpoint, load_checkpoint

TINY = VqConfig(image_size=16, downsample=4, channels=8, res_blocks=1, codebook_size=16, code_dim=4)

# Trains in ~4 s of one CPU core and takes the held-out error from ~0.011 to ~0.006.
TRAIN_CONFIG: dict[str, Any] = {
    "model": {"channels": 16, "codebook_size": 256, "code_dim": 32, "ema_decay": 0.8},
    "data": {"max_images": 64},
    "train": {
        "steps": 150,
        "batch_size": 32,
        "seed": 0,
        "log_every": 50,
        "save_every": 100,
        "tensorboard": False,
    },
    "optim": {"lr": 3e-3, "weight_decay": 0.0, "betas": [0.9, 0.99], "warmup_steps": 10},
}


def picture(width: int = 40, height: int = 24) -> Image.Image:
    """A grey picture with a red square and a green bar."""
    image = Image.new("RGB", (width, height), (128, 128, 128))
    image.paste((220, 30, 30), (4, 4, 14, 14))
    image.paste((30, 200, 30), (20, 2, 24, 20))
    return image


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize(("downsample", "image_size", "grid"), [(4, 16, 4), (8, 32, 4), (4, 32, 8)])
def test_encode_decode_round_trip_shapes_and_code_range(downsample: int, image_size: int, grid: int) -> None:
    torch.manual_seed(0)
    cfg = TINY.model_copy(update={"downsample": downsample, "image_size": image_size})
    tokenizer = VqTokenizer(cfg)
    assert isinstance(tokenizer, MediaTokenizer)
    assert (tokenizer.kind, tokenizer.modality, tokenizer.codebook_size) == ("vq", "image", 16)
    codes = tokenizer.encode(DecodedSegment("image", image=picture()))
    assert len(codes) == tokenizer.tokens_per_image == grid * grid
    assert all(isinstance(c, int) and 0 <= c < 16 for c in codes)
    image = tokenizer.decode(codes)
    assert (image.mode, image.size) == ("RGB", (image_size, image_size))
    # encoding is deterministic and row-major: the grid of encode_pixels, flattened
    pixels = tokenizer.pixels(picture())
    assert pixels.shape == (3, image_size, image_size) and pixels.dtype == torch.uint8
    assert tokenizer.encode_pixels(pixels[None])[0].flatten().tolist() == codes


def test_encode_and_decode_reject_bad_input() -> None:
    tokenizer = VqTokenizer(TINY)
    with pytest.raises(UserError, match="encodes images, got a audio segment"):
        tokenizer.encode(DecodedSegment("audio", audio=None, sample_rate=16000))
    with pytest.raises(UserError, match=r"has 16 codes \(4x4\), got 3"):
        tokenizer.decode([1, 2, 3])
    with pytest.raises(UserError, match=r"integers in \[0, 16\); got 16"):
        tokenizer.decode([0] * 15 + [16])
    with pytest.raises(UserError, match=r"got 1\.0"):
        tokenizer.decode([0] * 15 + [1.0])


def test_config_rejects_a_grid_that_does_not_divide() -> None:
    with pytest.raises(ValueError, match="image_size 36 is not a multiple of downsample 8"):
        VqConfig(image_size=36, downsample=8)


# ---------------------------------------------------------------------------- codebook


def toy_quantizer(**update: Any) -> VqVae:
    """Two 2-D codes at (0, 0) and (10, 10), each seen once per batch so far."""
    cfg = VqConfig(codebook_size=2, code_dim=2, dead_code_threshold=0.0, **update)
    quantizer = VqVae(cfg).quantizer
    with torch.no_grad():
        quantizer.embed.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
        quantizer.embed_sum.copy_(quantizer.embed.weight)
        quantizer.cluster_size.fill_(1.0)
        quantizer.initialized.fill_(True)
    return quantizer


def test_ema_update_math_on_a_toy_example() -> None:
    decay, eps = 0.5, 0.1
    quantizer = toy_quantizer(ema_decay=decay, ema_epsilon=eps)
    z = torch.tensor([[1.0, 1.0], [2.0, 2.0], [9.0, 9.0]])  # -> codes 0, 0, 1
    # as a [B=1, D=2, h=1, w=3] encoder output through forward in training mode
    out = quantizer.train()(z.t().reshape(1, 2, 1, 3))
    assert out.codes.flatten().tolist() == [0, 0, 1]
    # by hand: counts n = (2, 1), sums s = ((3, 3), (9, 9))
    size = [decay * 1 + (1 - decay) * 2, decay * 1 + (1 - decay) * 1]  # 1.5, 1.0
    sums = [decay * 0 + (1 - decay) * 3, decay * 10 + (1 - decay) * 9]  # 1.5, 9.5
    total = sum(size)
    smoothed = [(n + eps) / (total + 2 * eps) * total for n in size]  # Laplace smoothing
    expected = torch.tensor([[sums[0] / smoothed[0]] * 2, [sums[1] / smoothed[1]] * 2])
    torch.testing.assert_close(quantizer.cluster_size, torch.tensor(size))
    torch.testing.assert_close(quantizer.embed_sum, torch.tensor([[sums[0]] * 2, [sums[1]] * 2]))
    torch.testing.assert_close(quantizer.embed.weight, expected)
    # commitment: mean squared distance of z to its (pre-update) codes
    torch.testing.assert_close(out.commitment_loss, torch.tensor((2 * 1 + 2 * 4 + 2 * 1) / 6))
    # evaluation mode never moves the codebook
    before = quantizer.embed.weight.clone()
    quantizer.eval()(z.t().reshape(1, 2, 1, 3))
    torch.testing.assert_close(quantizer.embed.weight, before)


def test_dead_codes_restart_at_batch_vectors() -> None:
    torch.manual_seed(0)
    cfg = VqConfig(codebook_size=4, code_dim=3, dead_code_threshold=1.0)
    quantizer = VqVae(cfg).quantizer
    quantizer.cluster_size.copy_(torch.tensor([5.0, 2.0, 0.5, 0.0]))
    kept = quantizer.embed.weight[:2].detach().clone()
    flat = torch.randn(10, 3) + 100.0  # far from every code
    assert quantizer.restart_dead_codes(flat) == 2
    torch.testing.assert_close(quantizer.embed.weight[:2], kept)
    for row in quantizer.embed.weight[2:]:
        assert any(torch.equal(row, candidate) for candidate in flat)
    torch.testing.assert_close(quantizer.cluster_size, torch.tensor([5.0, 2.0, 1.0, 1.0]))
    torch.testing.assert_close(quantizer.embed_sum[2:], quantizer.embed.weight[2:] * 1.0)


def test_straight_through_codebook_learns_by_gradient_ema_does_not() -> None:
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    for quantizer, codebook_grad in (("ema", False), ("straight_through", True)):
        model = VqVae(TINY.model_copy(update={"quantizer": quantizer})).train()
        out = model(pixels)
        out.loss.backward()
        assert (model.quantizer.embed.weight.grad is not None) is codebook_grad
        first_conv = model.encoder[0].weight.grad
        assert first_conv is not None and first_conv.abs().sum() > 0  # straight through to the encoder


# ---------------------------------------------------------------------------- directory


def test_save_load_gives_identical_codes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tokenizer = VqTokenizer(TINY)
    tokenizer.model.train()(torch.rand(4, 3, 16, 16) * 2 - 1)  # data init + one EMA update
    tokenizer.model.eval()
    tokenizer.save(tmp_path / "vq")
    manifest = json.loads((tmp_path / "vq" / "media_tokenizer.json").read_text())
    assert (manifest["kind"], manifest["modality"], manifest["codebook_size"]) == ("vq", "image", 16)
    loaded = load_media_tokenizer(tmp_path / "vq")
    assert isinstance(loaded, VqTokenizer) and loaded.config == TINY
    for name, value in tokenizer.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[name]), name
    segment = DecodedSegment("image", image=picture(37, 53))
    assert loaded.encode(segment) == tokenizer.encode(segment)
    built = TOKENIZERS.build(VqTokenizerConfig(name="vq", path=str(tmp_path / "vq")))
    assert built.encode(segment) == tokenizer.encode(segment)


def test_load_errors_are_one_line_user_errors(tmp_path: Path) -> None:
    VqTokenizer(TINY).save(tmp_path / "vq")
    with pytest.raises(ConfigError, match="tokenizer path is not set"):
        TOKENIZERS.build(VqTokenizerConfig(name="vq"))
    manifest = tmp_path / "vq" / "media_tokenizer.json"
    data = json.loads(manifest.read_text())
    data["config"]["codebook_size"] = 32  # no longer matches the weights
    manifest.write_text(json.dumps(data))
    with pytest.raises(UserError, match="does not match the config"):
        load_media_tokenizer(tmp_path / "vq")
    data["config"]["chanels"] = 8
    manifest.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="chanels: unknown key"):
        load_media_tokenizer(tmp_path / "vq")
    (tmp_path / "vq" / "model.safetensors").write_bytes(b"not safetensors")
    data["config"] = TINY.model_dump()
    manifest.write_text(json.dumps(data))
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_media_tokenizer(tmp_path / "vq")


# ---------------------------------------------------------------------------- training + CLI


def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory shared by the xdist workers of this session (built once, under a lock)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return tmp_path_factory.getbasetemp() / "vq-shared"
    return tmp_path_factory.getbasetemp().parent / "vq-shared"  # the session's directory


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 captioned demo pictures (64x64) in one shard, plus an 8-picture held-out split."""
    root = shared_root(tmp_path_factory) / "demo"
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{root}.lock"):
        if not (root / "index.json").is_file():
            build_demo_dataset(root, samples=80, shards=1, seed=0, kinds_mix={"caption": 1.0}, progress=False)
    return root


@pytest.fixture(scope="module")
def trained(demo_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mmpt tokenizer train --kind vq` with TRAIN_CONFIG (150 steps on 64 images of 32x32)."""
    root = shared_root(tmp_path_factory) / "run"
    out = root / "out"
    with FileLock(f"{root}.lock"):
        if not (out / "eval.json").is_file():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            config = write_yaml(root / "vq.yaml", {"base": "tokenizers/vq_tiny", **TRAIN_CONFIG})
            argv = ["tokenizer", "train", "--kind", "vq", "--config", str(config)]
            assert main([*argv, "--input", str(demo_shards / "shard-*.tar"), "--out", str(out)]) == 0
    return out


def test_training_lowers_heldout_reconstruction_error(trained: Path) -> None:
    report = json.loads((trained / "eval.json").read_text())
    assert report["heldout"]["images"] == 8 and report["heldout"]["source"].endswith("heldout/shard-*.tar")
    assert report["train_images"] == 64 and report["steps"] == 150
    before, after = report["before"]["mse"], report["after"]["mse"]
    assert after < 0.7 * before, report
    assert report["after"]["psnr_db"] > report["before"]["psnr_db"]
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [50, 100, 150]
    assert {"loss", "reconstruction_mse", "perplexity", "lr"} <= set(records[0])


def test_trained_directory_loads_and_reproduces_its_codes(trained: Path) -> None:
    tokenizer = load_media_tokenizer(trained)
    assert isinstance(tokenizer, VqTokenizer) and tokenizer.config.channels == 16
    sample = json.loads((trained / "sample_codes.json").read_text())
    original = Image.open(trained / "sample_original.png").convert("RGB")  # already 32x32
    assert tokenizer.encode(DecodedSegment("image", image=original)) == sample["codes"]
    # the checkpoint (LM trainer format) holds the same weights as model.safetensors
    checkpoint = latest_checkpoint(trained)
    assert checkpoint is not None and checkpoint.name == "step_0000150"
    assert not (trained / "checkpoints" / "step_0000100").exists()  # keep_last: 1
    model = VqVae(tokenizer.config)
    load_checkpoint(checkpoint, model, None)
    for name, value in tokenizer.model.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name


def test_cli_decode_writes_png(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pics" / "recon.png"
    assert (
        main(
            [
                "tokenizer",
                "decode",
                str(trained),
                "--ids",
                str(trained / "sample_codes.json"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "decoded 64 codes" in capsys.readouterr().out
    image = Image.open(out)
    assert (image.format, image.size) == ("PNG", (32, 32))
    plain = tmp_path / "ids.json"  # a bare list works too
    plain.write_text(json.dumps(json.loads((trained / "sample_codes.json").read_text())["codes"]))
    assert (
        main(["tokenizer", "decode", str(trained), "--ids", str(plain), "--out", str(tmp_path / "b.png")])
        == 0
    )
    assert Image.open(tmp_path / "b.png").tobytes() == image.tobytes()
    # user errors: one line, exit 2
    capsys.readouterr()
    plain.write_text("[1, 2, 3]")
    assert (
        main(["tokenizer", "decode", str(trained), "--ids", str(plain), "--out", str(tmp_path / "c.png")])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has 64 codes (8x8), got 3" in err
    assert (
        main(["tokenizer", "decode", str(tmp_path), "--ids", str(plain), "--out", str(tmp_path / "c.png")])
        == 2
    )
    assert "not a media tokenizer directory" in capsys.readouterr().err


def test_cli_bad_config_key_and_non_empty_out_exit_2(
    trained: Path, demo_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write_yaml(tmp_path / "bad.yaml", {"base": "tokenizers/vq_tiny", "model": {"chanels": 8}})
    shards = str(demo_shards / "shard-*.tar")
    argv = ["tokenizer", "train", "--kind", "vq", "--input", shards]
    assert main([*argv, "--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert "model.chanels: unknown key" in err and "did you mean 'channels'" in err
    assert not (tmp_path / "x").exists()  # failed before any work
    assert main([*argv, "--out", str(trained)]) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err


def test_cli_vocab_size_and_heldout_split_from_input(
    demo_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--vocab-size sets the codebook; input without a heldout/ split gives up its last images."""
    shard = tmp_path / "only" / "shard-000000.tar"
    shard.parent.mkdir()
    shutil.copy(demo_shards / "shard-000000.tar", shard)
    config = write_yaml(
        tmp_path / "short.yaml",
        {
            "base": "tokenizers/vq_tiny",
            "model": {"channels": 8},
            "data": {"heldout_images": 10},
            "train": {"steps": 2, "log_every": 1, "tensorboard": False},
        },
    )
    out = tmp_path / "out"
    argv = ["tokenizer", "train", "--kind", "vq", "--config", str(config), "--input", str(shard)]
    assert main([*argv, "--vocab-size", "32", "--out", str(out)]) == 0
    assert "reconstruction MSE" in capsys.readouterr().out
    tokenizer = load_media_tokenizer(out)
    assert tokenizer.codebook_size == 32
    report = json.loads((out / "eval.json").read_text())
    assert report["heldout"] == {"source": f"last 10 images of {shard}", "images": 10}
    assert report["train_images"] == 70
    assert main([*argv, "--out", str(out), "--overwrite"]) == 0  # replaces the earlier run
    assert load_media_tokenizer(out).codebook_size == 256


def test_list_tokenizers_shows_vq(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "tokenizers"]) == 0
    assert "VQ-VAE image tokenizer" in capsys.readouterr().out
