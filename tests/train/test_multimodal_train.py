"""Tiny multimodal models train from configs/models/ on demo shards."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmpretrain.cli import main
from mmpretrain.data.demo_data import build_demo_dataset
from mmpretrain.train.metrics import read_metrics


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    build_demo_dataset(out, samples=120, shards=4, seed=0, progress=False)
    return out


def train(config: str, shards: Path, run_dir: Path, *extra: str) -> list[float]:
    argv = [
        "train",
        config,
        "--run-dir",
        str(run_dir),
        "--set",
        f'data.shards.reader.shards=["{shards}/shard-*.tar"]',
        "--set",
        "train.batch_size=2",
        "--set",
        "train.seq_len=192",
        "--set",
        "train.log_every=1",
        *extra,
    ]
    assert main(argv) == 0
    return [r["loss"] for r in read_metrics(run_dir)]


def test_image_speech_text_model_lowers_the_loss(demo_shards: Path, tmp_path: Path) -> None:
    losses = train("models/omni_tiny", demo_shards, tmp_path / "omni", "--set", "train.max_steps=30")
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5


@pytest.mark.parametrize("config", ["models/vlm_tiny", "models/speech_tiny"])
def test_tiny_vlm_and_speech_lm_train_and_resume_exactly(
    config: str, demo_shards: Path, tmp_path: Path
) -> None:
    full = train(
        config, demo_shards, tmp_path / "full", "--set", "train.max_steps=8", "--set", "train.save_every=3"
    )
    stopped = train(
        config,
        demo_shards,
        tmp_path / "split",
        "--set",
        "train.max_steps=8",
        "--set",
        "train.save_every=3",
        "--set",
        "train.stop_after_steps=4",
    )
    assert stopped == full[:4]
    resumed = train(
        config,
        demo_shards,
        tmp_path / "split",
        "--set",
        "train.max_steps=8",
        "--set",
        "train.save_every=3",
        "--resume",
    )
    assert resumed == full  # bitwise, through the multimodal reader state
