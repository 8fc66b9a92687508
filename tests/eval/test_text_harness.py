"""lm-evaluation-harness tasks over local files run in-process on a tiny text run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from mmpretrain.cli import main
from mmpretrain.eval.model_io import load_for_eval
from mmpretrain.eval.text_harness import MmptHarnessLM

CHOICE_TASK = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
"""

PERPLEXITY_TASK = """task: tiny_perplexity
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
"""


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "text"
    settings = ["train.max_steps=2", "train.save_every=2", "train.seq_len=64", "train.batch_size=2"]
    argv = ["train", "tiny", "--run-dir", str(run)]
    for setting in settings:
        argv += ["--set", setting]
    assert main(argv) == 0
    return run


def _tasks(tmp_path: Path) -> tuple[Path, Path]:
    docs = [{"context": "KING. ", "choices": [" Hark", " zzqx"], "label": 0} for _ in range(3)]
    (tmp_path / "choice.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "text.jsonl").write_text(json.dumps({"text": "To be, or not to be."}) + "\n")
    choice, perplexity = tmp_path / "choice.yaml", tmp_path / "perplexity.yaml"
    choice.write_text(CHOICE_TASK.format(data=tmp_path / "choice.jsonl"))
    perplexity.write_text(PERPLEXITY_TASK.format(data=tmp_path / "text.jsonl"))
    return choice, perplexity


def test_cli_runs_local_lm_eval_tasks(
    text_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    choice, perplexity = _tasks(tmp_path)
    out = tmp_path / "results.json"
    argv = ["eval", str(text_run), "--task", f"lm-eval:{choice},lm-eval:{perplexity}", "--out", str(out)]
    assert main(argv) == 0
    results = json.loads(out.read_text())["results"]
    assert 0.0 <= results["tiny_choice"]["acc,none"] <= 1.0
    assert math.isfinite(results["tiny_perplexity"]["word_perplexity,none"])
    assert "tiny_choice: acc" in capsys.readouterr().out


def test_loglikelihood_equals_a_direct_forward(text_run: Path) -> None:
    loaded = load_for_eval(text_run)
    lm = MmptHarnessLM(loaded)

    class Request:
        args = ("KING. ", " Hark")

    ((score, _),) = lm.loglikelihood([Request()])
    tokenizer = loaded.tokenizer
    prefix = [tokenizer.eos_id, *list(tokenizer.encode("KING. "))]
    target = list(tokenizer.encode(" Hark"))
    with torch.no_grad():
        logits = loaded.model.llm(input_ids=torch.tensor([prefix + target])).logits[0].float()
    logprobs = torch.log_softmax(logits, -1)
    expected = sum(logprobs[len(prefix) - 1 + i, t].item() for i, t in enumerate(target))
    assert score == pytest.approx(expected, abs=1e-5)


def test_mixing_harness_and_native_tasks_is_refused(text_run: Path, tmp_path: Path) -> None:
    choice, _ = _tasks(tmp_path)
    assert main(["eval", str(text_run), "--task", f"shapes_count,lm-eval:{choice}"]) == 2
    assert main(["eval", str(text_run), "--task", f"lm-eval:{tmp_path / 'missing.yaml'}"]) == 2
