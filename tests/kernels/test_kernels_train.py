"""Every sparse / BitNet kind trains a tiny text-only LM and a tiny VLM with one rule list,
and a `mmpt train` run with a kernels block shows the kernel table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from kernel_helpers import build, text_batch, train_steps, vlm_batch

from mmpretrain.cli import main
from mmpretrain.kernels import kernel_modules, kernel_rows
from mmpretrain.kernels.sparse24 import is_24_sparse
from mmpretrain.train.metrics import read_metrics

# kind options that make each kind's schedule act inside 20 steps
KINDS: dict[str, dict[str, Any]] = {
    "sparse24_sr_ste": {"kind": "sparse24", "variant": "sr_ste", "update_every": 5, "dense_warmup_steps": 2},
    "sparse24_s_ste": {"kind": "sparse24", "variant": "s_ste", "update_every": 5},
    "unstructured": {
        "kind": "unstructured",
        "sparsity": 0.5,
        "schedule": "gradual",
        "ramp_steps": 10,
        "update_every": 2,
    },
    "bitnet": {"kind": "bitnet", "transition_start": 2, "transition_steps": 8},
}


def rules(options: dict[str, Any]) -> list[dict[str, Any]]:
    """The same list for both models: the LLM's MLP and attention, and any connector."""
    return [
        {"match": "llm.*.mlp.*", **options},
        {"match": ["llm.*.self_attn.*", "connectors.*"], **options},
    ]


@pytest.mark.parametrize("model_name", ["llama_tiny", "vlm_tiny"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kind_trains_text_and_vlm_models(kind: str, model_name: str) -> None:
    model = build(model_name, rules(KINDS[kind]))
    rows = kernel_rows(model)
    assert len(rows) == 14 + (2 if model_name == "vlm_tiny" else 0)  # + the mlp connector's 2 Linears
    batch = text_batch() if model_name == "llama_tiny" else vlm_batch(model_config_of(model_name))
    losses = train_steps(model, batch, 20)
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    for name, module in kernel_modules(model):
        if module.kind == "sparse24":
            assert is_24_sparse(module.effective_weight()), name
        if module.kind == "unstructured":
            assert float(module.sparsity) == pytest.approx(0.5), name
        if module.kind == "bitnet":
            assert module.mix == 1.0, name


def model_config_of(name: str) -> Any:
    from kernel_helpers import model_config

    return model_config(name)


@pytest.fixture(scope="module")
def text_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small corpus and a BPE tokenizer trained on it."""
    from mmpretrain.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("kernels_cli")
    words = ["the", "king", "queen", "speaks", "of", "night", "and", "day"]
    words += ["love", "war", "crown", "sword", "sea", "ship"]
    docs = [" ".join(words[(i * 7 + j) % len(words)] for j in range(5 + i % 20)) + "." for i in range(200)]
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    train_bpe(docs, vocab_size=300).save(root / "tokenizer")
    return corpus, root / "tokenizer"


def test_cli_train_with_a_kernels_block_logs_the_table(
    text_setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus, tokenizer = text_setup
    config = {
        "model": {
            "llm": {
                "name": "llama",
                "vocab_size": 320,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_layers": 2,
                "num_heads": 4,
                "num_kv_heads": 2,
                "max_position_embeddings": 128,
            },
            "kernels": [
                {"match": "llm.*.mlp.*", "kind": "sparse24", "update_every": 2},
                {"match": "llm.*.self_attn.*", "kernel": {"name": "bitnet", "transition_steps": 4}},
            ],
        },
        "data": {
            "sources": [{"format": "text", "paths": [str(corpus)], "split": "paragraphs", "min_chars": 1}],
            "tokenizer": {"name": "bpe", "path": str(tokenizer)},
            "buffer_docs": 64,
        },
        "train": {"max_steps": 6, "batch_size": 2, "seq_len": 32, "log_every": 1, "save_every": 3, "seed": 0},
        "optim": {"lr": 3e-3, "warmup_steps": 1},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert (
        main(["train", str(path), "--run-dir", str(tmp_path / "run"), "--set", "train.stop_after_steps=3"])
        == 0
    )
    out = capsys.readouterr().out
    assert "kernels:  module" in out
    assert "llm.model.layers.{0-1}.mlp.gate_proj" in out and "sparse24" in out
    assert "llm.model.layers.{0-1}.self_attn.q_proj" in out and "bitnet" in out
    assert "14 Linear modules swapped (bitnet: 8, sparse24: 6)" in out
    # the resolved config keeps the rules; a resumed run continues the kinds' state exactly
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run"), "--resume"]) == 0
    resumed = [r["loss"] for r in read_metrics(tmp_path / "run")]
    assert main(["train", str(path), "--run-dir", str(tmp_path / "full")]) == 0
    full = [r["loss"] for r in read_metrics(tmp_path / "full")]
    assert len(full) == 6 and all(math.isfinite(x) for x in full)
    assert resumed == full  # bitwise through masks and the bitnet mix
