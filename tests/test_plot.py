"""`mmpt plot`: PNG curves of plain runs, recipe runs and stage directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmpretrain.cli import main
from mmpretrain.plot import find_reports, plot_runs, read_run

PNG = b"\x89PNG\r\n\x1a\n"


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _records(
    steps: int, every: int = 10, sources: tuple[str, ...] = (), start_loss: float = 6.0
) -> list[dict]:
    out = []
    for step in range(every, steps + 1, every):
        record = {
            "step": step,
            "loss": start_loss / (1 + step / 50),
            "lr": 1e-3 * min(1.0, step / 20),
            "tokens": step * 1024,
            "tokens_per_s": 3000.0 + step,
            "packing_efficiency": 0.97,
        }
        for i, name in enumerate(sources):
            record[f"tokens/{name}"] = step * 1024 * (i + 1) // (len(sources) * (len(sources) + 1) // 2)
            record[f"docs/{name}"] = step * (i + 1)
        out.append(record)
    return out


def _report(path: Path, scores: dict[int, float], task: str = "shapes_count") -> None:
    entries = [
        {"task": task, "shots": k, "metric": "vqa_accuracy", "score": v, "n": 10} for k, v in scores.items()
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"results": entries, "settings": {}}), encoding="utf-8")


def test_plain_run_gets_loss_lr_throughput_and_mix(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write_jsonl(run / "metrics.jsonl", _records(100, sources=("demo", "text")))
    written = plot_runs([run])
    assert set(written) == {"loss", "lr", "throughput", "data_mix"}  # no eval reports: no few-shot plot
    for path in written.values():
        assert path.parent == run / "plots"
        assert path.read_bytes().startswith(PNG)


def test_stage_directories_are_read_in_order_on_global_steps_and_tokens(tmp_path: Path) -> None:
    run = tmp_path / "demo"
    _write_jsonl(run / "stages" / "00-llm" / "metrics.jsonl", _records(50))
    _write_jsonl(run / "stages" / "01-full" / "metrics.jsonl", _records(30, sources=("demo",)))
    curves = read_run(run)
    assert [s.name for s in curves.stages] == ["llm", "full"]
    full = curves.stages[1].records
    assert [r["step"] for r in full] == [60, 70, 80]  # after the 50 steps of llm
    assert full[0]["tokens"] == 50 * 1024 + 10 * 1024  # tokens continue across stages
    assert full[0]["stage_tokens"] == 10 * 1024


def test_recipe_metrics_with_heldout_evals_and_branches(tmp_path: Path) -> None:
    run = tmp_path / "recipe"
    stable = [{**r, "stage": "stable", "stage_step": r["step"]} for r in _records(40)]
    cooldown = [
        {**r, "stage": "cooldown", "stage_step": r["step"], "step": 20 + r["step"]} for r in _records(20)
    ]  # branched at step 20 of stable
    evals = [{"stage": "stable", "stage_step": 0, "step": 0, "heldout/text/loss": 7.0},
             {"stage": "stable", "stage_step": 40, "step": 40, "heldout/text/loss": 5.0}]  # fmt: skip
    _write_jsonl(run / "metrics.jsonl", stable + cooldown + evals)
    curves = read_run(run)
    assert [s.name for s in curves.stages] == ["stable", "cooldown"]
    assert len(curves.evals) == 2
    first = curves.stages[1].records[0]
    assert first["step"] == 30 and first["tokens"] == 20 * 1024 + 10 * 1024  # from the branch point
    assert set(plot_runs([run], tmp_path / "out")) == {"loss", "lr", "throughput"}


def test_fewshot_reports_found_below_the_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write_jsonl(run / "metrics.jsonl", _records(20))
    _report(run / "eval" / "trained.json", {0: 0.5, 4: 0.55})
    _report(run / "eval" / "untrained.json", {0: 0.2, 4: 0.2})
    _report(run / "eval" / "chance.json", {0: 0.14, 4: 0.14})
    (run / "eval" / "notes.json").write_text('{"something": 1}')  # not a report: ignored
    assert set(find_reports(run)) == {"trained", "untrained", "chance"}
    written = plot_runs([run])
    assert written["fewshot"].read_bytes().startswith(PNG)


def test_several_runs_overlay_into_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a", "b"):
        _write_jsonl(tmp_path / name / "metrics.jsonl", _records(30))
    code = main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")])
    out = capsys.readouterr().out
    assert code == 0
    assert "loss" in out and str(tmp_path / "cmp" / "loss.png") in out
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == ["loss.png", "lr.png", "throughput.png"]


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "holds no metrics.jsonl" in err and err.count("\n") == 1
    _write_jsonl(tmp_path / "new" / "metrics.jsonl", [])
    assert main(["plot", str(tmp_path / "new")]) == 2
    assert "no logged training steps" in capsys.readouterr().err
