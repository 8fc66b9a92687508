"""`mmpt eval` end to end on a tiny VLM trained for two steps on demo shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mmpretrain.cli import main
from mmpretrain.data.demo_data import build_demo_dataset
from mmpretrain.eval.report import RESULTS_KEYS, TIMING_KEYS


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    mix = {"caption": 0.4, "vqa": 0.4, "interleaved": 0.2}  # image kinds only: no speech synthesis
    build_demo_dataset(out, samples=80, shards=2, seed=0, kinds_mix=mix, progress=False)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> Path:
    run = tmp_path_factory.mktemp("runs") / "vlm"
    argv = ["train", "models/vlm_tiny", "--run-dir", str(run)]
    for setting in (
        f'data.shards.reader.shards=["{demo_data}/shard-*.tar"]',
        "data.shards.buffer_docs=16",
        "train.batch_size=2",
        "train.seq_len=192",
        "train.max_steps=2",
        "train.save_every=2",
    ):
        argv += ["--set", setting]
    assert main(argv) == 0
    return run


def eval_argv(checkpoint: Path, demo_data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "eval", str(checkpoint), "--task", "shapes_count", "--shots", "0,2", "--limit", "4",
        "--set", f"heldout={demo_data / 'heldout'}", "--set", "max_demos=16", "--out", str(out), *extra,
    ]  # fmt: skip


def test_eval_zero_and_two_shot_writes_json_markdown_and_plot(
    run_dir: Path, demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.json"
    assert main(eval_argv(run_dir, demo_data, out, "--device", "cpu")) == 0
    stdout = capsys.readouterr().out
    assert "| shapes_count | vqa_accuracy |" in stdout and "2-shot" in stdout
    payload = json.loads(out.read_text())
    entries = payload["results"]
    assert [(e["task"], e["shots"]) for e in entries] == [("shapes_count", 0), ("shapes_count", 2)]
    for entry in entries:
        assert tuple(entry) == RESULTS_KEYS and tuple(entry["timing"]) == TIMING_KEYS
        assert entry["metric"] == "vqa_accuracy" and entry["n"] == 4 and entry["seed"] == 0
        assert 0.0 <= entry["score"] <= 1.0
        assert entry["checkpoint"].endswith("step_0000002") and entry["step"] == 2
        assert entry["config_hash"] == json.loads((run_dir / "environment.json").read_text())["config_hash"]
    assert entries[0]["demos"] == "none" and entries[1]["demos"] == "random"
    assert entries[1]["timing"]["prefix_runs"] == 1  # the 4 queries share their 2 demonstrations
    assert payload["settings"]["shots"] == [0, 2]
    table = (tmp_path / "results.md").read_text()
    assert table.splitlines()[0] == "| task | metric | 0-shot | 2-shot |"
    with Image.open(tmp_path / "results.png") as image:
        assert image.format == "PNG" and image.size[0] > 100
    predictions = [
        json.loads(line) for line in (tmp_path / "results.predictions.jsonl").read_text().splitlines()
    ]
    assert len(predictions) == 8 and {len(p["demos"]) for p in predictions} == {0, 2}


def test_eval_checkpoint_dir_with_rices_and_naive_path_agree(
    run_dir: Path, demo_data: Path, tmp_path: Path
) -> None:
    checkpoint = run_dir / "checkpoints" / "step_0000002"
    scores = []
    for extra in ([], ["--no-prefix-cache", "--batch-size", "3"]):
        out = tmp_path / f"r{len(extra)}.json"
        argv = eval_argv(checkpoint, demo_data, out, "--demos", "rices", *extra)
        argv[argv.index("shapes_count")] = "shapes_classify"
        assert main(argv) == 0
        entries = json.loads(out.read_text())["results"]
        assert entries[1]["demos"] == "rices"
        scores.append([e["score"] for e in entries])
        predictions = (tmp_path / f"r{len(extra)}.predictions.jsonl").read_text()
        scores.append([json.loads(line)["prediction"] for line in predictions.splitlines()])
    assert scores[0] == scores[2] and scores[1] == scores[3]


def test_eval_user_errors_exit_2(
    run_dir: Path, demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.json"
    assert main(eval_argv(tmp_path / "nope", demo_data, out)) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(eval_argv(run_dir, demo_data, out, "--shots", "0,x")) == 2
    assert "--shots" in capsys.readouterr().err
    bare = tmp_path / "bare"
    (bare / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", bare / "config.yaml")
    assert main(eval_argv(bare, demo_data, out)) == 2
    assert "no committed checkpoint" in capsys.readouterr().err
    assert not out.exists()


def test_eval_saved_model_directory_matches_the_run(run_dir: Path, demo_data: Path, tmp_path: Path) -> None:
    from mmpretrain.eval.model_io import load_for_eval

    loaded = load_for_eval(run_dir)
    saved = tmp_path / "saved"
    loaded.model.save_pretrained(str(saved), loaded.model_config)
    shutil.copytree(run_dir / "tokenizer", saved / "tokenizer")
    outputs = []
    for source in (run_dir, saved):
        out = tmp_path / f"{source.name}.json"
        assert main(eval_argv(source, demo_data, out, "--shots", "2")) == 0
        lines = Path(str(out).replace(".json", ".predictions.jsonl")).read_text().splitlines()
        outputs.append([json.loads(line)["prediction"] for line in lines])
    assert outputs[0] == outputs[1]
    assert json.loads((tmp_path / "saved.json").read_text())["results"][0]["checkpoint"] == str(saved)


@pytest.mark.parametrize("to", ["safetensors", "hf"])
def test_eval_exported_directories_match_the_run(
    run_dir: Path, demo_data: Path, tmp_path: Path, to: str
) -> None:
    exported = tmp_path / f"export-{to}"
    assert main(["export", str(run_dir), "--to", to, "--out", str(exported)]) == 0
    outputs = []
    for source in (run_dir, exported):
        out = tmp_path / f"{source.name}.json"
        assert main(eval_argv(source, demo_data, out, "--shots", "2")) == 0
        lines = Path(str(out).replace(".json", ".predictions.jsonl")).read_text().splitlines()
        outputs.append([json.loads(line)["prediction"] for line in lines])
    assert outputs[0] == outputs[1]
