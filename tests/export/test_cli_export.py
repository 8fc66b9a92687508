"""`mmpt export` end to end: from a trained run directory's newest checkpoint to
transformers and to the native format; one-line errors; the README's Export section
(mapping table, and the snippets loading the exported demo VLM and speech LM) is run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from export_helpers import assert_logits_close, write_run_dir
from export_sentences import sentences

from mmpretrain.cli import main
from mmpretrain.data.tokenizer import TextTokenizer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A tiny Llama trained 2 steps by `mmpt train` (checkpoint at step 2)."""
    root = tmp_path_factory.mktemp("text_run")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(sentences(200, seed=1)) + "\n", encoding="utf-8")
    llm = {"name": "llama", "vocab_size": 320, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2}
    config: dict[str, Any] = {
        "model": {"llm": {**llm, "num_heads": 4, "num_kv_heads": 2, "max_position_embeddings": 128}},
        "data": {
            "sources": [{"format": "text", "paths": [str(corpus)], "split": "paragraphs", "min_chars": 1}],
            "tokenizer": {"name": "bpe", "path": str(tokenizer_dir)},
            "buffer_docs": 64,
        },
        "train": {"max_steps": 2, "batch_size": 2, "seq_len": 64, "log_every": 1, "save_every": 2, "seed": 0},
        "optim": {"lr": 3e-3, "warmup_steps": 1},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["train", str(root / "run.yaml"), "--run-dir", str(root / "run")]) == 0
    return root / "run"


def test_export_trained_run_to_hf_and_native(
    text_run: Path, tokenizer: TextTokenizer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForCausalLM

    from mmpretrain.export.gather import build_export_model, resolve_source
    from mmpretrain.model.multimodal import MultimodalLM

    capsys.readouterr()
    out = tmp_path / "hf"
    assert main(["export", str(text_run), "--to", "hf", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "step_0000002 (step 2)" in stdout and "LlamaForCausalLM" in stdout
    assert re.search(r"[\d,]+ parameters, float32, [\d.]+ KB in 1 safetensors file", stdout), stdout
    hf = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    model, _ = build_export_model(resolve_source(text_run))
    ids = torch.tensor([tokenizer.encode("the red circle is a small shape.")])
    with torch.no_grad():
        assert_logits_close(model.llm(input_ids=ids).logits, hf(input_ids=ids).logits)
    assert hf.generate(input_ids=ids, max_new_tokens=2, do_sample=False).shape[1] == ids.shape[1] + 2

    native = tmp_path / "native"
    argv = ["export", str(text_run), "--to", "safetensors", "--out", str(native)]
    assert main([*argv, "--dtype", "bfloat16", "--max-shard-size", "20KB"]) == 0
    assert "MultimodalLM" in capsys.readouterr().out and "bfloat16" in (native / "export.json").read_text()
    assert (native / "model.safetensors.index.json").is_file()
    assert (native / "tokenizer" / "tokenizer.json").is_file()
    assert "- steps: 2 of 2" in (native / "README.md").read_text()
    loaded = MultimodalLM.from_pretrained(str(native))
    assert loaded.llm.get_input_embeddings().weight.shape == (320, 32)
    # the export is itself a source: native -> hf
    assert main(["export", str(native), "--to", "hf", "--out", str(tmp_path / "again")]) == 0


def test_export_errors_are_one_line(
    tmp_path: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_run_dir(tmp_path / "omni", "models/omni_tiny", [], tokenizer_dir, step=1)
    run = str(tmp_path / "omni")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    assert main(["export", run, "--to", "safetensors", "--out", str(busy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists and is not empty" in err
    assert main(["export", str(tmp_path / "nope"), "--to", "hf", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", run, "--to", "hf", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "error: cannot export to transformers (--to hf): encoders:"
    )
    assert "connectors.audio (frame_stack_mlp)" in err and "--to safetensors" in err
    assert not (tmp_path / "o").exists()
    assert main(["export", run, "--to", "safetensors", "--out", str(tmp_path / "o")]) == 0  # the native route


# ---------------------------------------------------------------------------- README


def export_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Export\n")
    return text[start : text.index("\n## ", start + 1)]


def test_readme_mapping_table_is_the_code_table() -> None:
    from mmpretrain.export.mapping import mapping_table_markdown

    assert mapping_table_markdown() in export_section()


def test_readme_snippets_load_the_exported_demo_models(
    tmp_path: Path, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    section = export_section()
    commands = re.findall(r"```bash\n(.*?)```", section, re.S)[0].replace("\\\n", " ")
    trains = [shlex.split(line) for line in commands.splitlines() if "mmpt train" in line]
    assert [t[2] for t in trains] == ["models/vlm_tiny", "models/speech_tiny"]
    for argv, name in zip(trains, ("vlm", "speech"), strict=True):
        overrides = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]
        write_run_dir(tmp_path / "runs" / name, argv[2], overrides, tokenizer_dir, step=1)
        out = tmp_path / "exported" / name
        assert main(["export", str(tmp_path / "runs" / name), "--to", "hf", "--out", str(out)]) == 0
    snippets = re.findall(r"```python\n(.*?)```", section, re.S)
    loading = [s for s in snippets if "exported/" in s]
    assert len(loading) == 2
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    for snippet in loading:
        exec(compile(snippet, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2  # each snippet prints its generated text
