"""A mixed run of interleaved + captions + speech + text shards trains, logs per-source
counters and resumes exactly; mixing weights may change at a resume, other keys may not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mmpretrain.cli import main
from mmpretrain.data.demo_data import build_demo_dataset
from mmpretrain.train.metrics import read_metrics

KINDS = {"interleaved": "interleaved", "captions": "caption", "speech": "speech_caption", "text": "text"}
WEIGHTS = {"interleaved": 0.4, "captions": 0.3, "speech": 0.2, "text": 0.1}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mixed")
    for name, kind in KINDS.items():
        build_demo_dataset(root / name, samples=24, shards=2, seed=0, kinds_mix={kind: 1.0}, progress=False)
    return root


def write_config(path: Path, root: Path, weights: dict[str, float], temperature: float = 1.0) -> Path:
    mix = [
        {
            "name": name,
            "reader": {"shards": [f"{root / name}/shard-*.tar"], "shuffle_buffer": 16},
            "weight": w,
        }
        for name, w in weights.items()
    ]
    config: dict[str, Any] = {
        "base": "models/omni_tiny",  # vision + speech towers on a 2-layer Llama
        "data": {"shards": {"reader": None, "mix": mix, "temperature": temperature, "buffer_docs": 16}},
        "train": {"batch_size": 2, "seq_len": 192, "log_every": 1, "save_every": 3, "max_steps": 6},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def train(config: Path, run_dir: Path, *extra: str) -> list[dict[str, Any]]:
    assert main(["train", str(config), "--run-dir", str(run_dir), *extra]) == 0
    return read_metrics(run_dir)


def counters(record: dict[str, Any]) -> dict[str, int]:
    return {k: v for k, v in record.items() if k.startswith(("docs/", "tokens/"))}


def test_mixed_run_logs_per_source_counters_and_resumes_exactly(datasets: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "mixed.yaml", datasets, WEIGHTS)
    full = train(config, tmp_path / "full")
    assert len(full) == 6
    last = counters(full[-1])
    keys = {f"{kind}/{name}" for kind in ("docs", "tokens") for name in WEIGHTS}
    assert all(set(counters(record)) == keys for record in full)  # every source, from step 1 on
    assert sum(last[f"tokens/{name}"] for name in WEIGHTS) == full[-1]["tokens"]  # every position counted
    assert all(last[f"docs/{name}"] > 0 for name in WEIGHTS)

    stopped = train(config, tmp_path / "split", "--set", "train.stop_after_steps=3")
    assert [r["loss"] for r in stopped] == [r["loss"] for r in full[:3]]
    resumed = train(config, tmp_path / "split", "--resume")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]  # bitwise, through the mix state
    assert [counters(r) for r in resumed] == [counters(r) for r in full]  # counters kept across resume


def test_weights_may_change_at_a_resume_and_nothing_else(
    datasets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "staged"
    first = write_config(tmp_path / "stage1.yaml", datasets, WEIGHTS)
    train(first, run_dir, "--set", "train.stop_after_steps=2", "--set", "train.save_every=2")
    other_reader = write_config(tmp_path / "other.yaml", datasets, {**WEIGHTS, "text": 0.5})
    data = yaml.safe_load(other_reader.read_text(encoding="utf-8"))
    data["data"]["shards"]["mix"][3]["reader"]["shuffle_buffer"] = 8
    other_reader.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert main(["train", str(other_reader), "--run-dir", str(run_dir), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "differs from the saved one in data.shards.mix.3.reader.shuffle_buffer;" in err  # weight: allowed

    second = write_config(
        tmp_path / "stage2.yaml",
        datasets,
        {"interleaved": 0.1, "captions": 0.1, "speech": 0.1, "text": 0.7},
        temperature=2.0,
    )
    records = train(second, run_dir, "--resume", "--set", "train.stop_after_steps=2")
    out = capsys.readouterr().out
    assert "new mixing weights from step 2 on" in out and "data.shards.mix.3.weight" in out
    assert "data.shards.temperature" in out
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(records[3][k] >= records[1][k] for k in counters(records[1]))  # cumulative
