"""Every registered LLM name builds tiny, runs forward, and loads from a local directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from mmpretrain.config import load_config
from mmpretrain.errors import ConfigError, UserError
from mmpretrain.registry import LLMS

BUILTIN_LLMS = ["gemma", "llama", "mistral", "qwen2", "qwen3"]


def test_builtin_names_are_exactly_registered() -> None:
    assert [n for n in LLMS.names() if n in BUILTIN_LLMS] == BUILTIN_LLMS


@pytest.mark.parametrize("name", BUILTIN_LLMS)
def test_every_llm_builds_tiny_and_runs_forward(name: str, tiny_llm_config: Callable[..., Any]) -> None:
    cfg = tiny_llm_config(name)
    model = LLMS.build(cfg)
    assert model.config.model_type == name
    assert model.config.num_hidden_layers == 2
    assert model.config.num_key_value_heads == 2
    assert sum(p.numel() for p in model.parameters()) < 50_000
    input_ids = torch.randint(0, cfg.vocab_size, (2, 12))
    out = model(input_ids=input_ids, labels=input_ids, use_cache=False)
    assert out.logits.shape == (2, 12, cfg.vocab_size)
    assert torch.isfinite(out.loss)
    # random init: loss is near log(vocab) (uniform prediction), not a trained value
    assert abs(out.loss.item() - torch.log(torch.tensor(float(cfg.vocab_size))).item()) < 1.0
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_every_shipped_model_config_builds() -> None:
    for name in BUILTIN_LLMS:
        cfg = load_config(f"models/{name}_tiny").model.llm
        model = LLMS.build(cfg)
        assert model.config.hidden_size == 64
        n_params = sum(p.numel() for p in model.parameters())
        assert 200_000 < n_params < 500_000, (name, n_params)


def test_mistral_sliding_window_and_gemma_tying(tiny_llm_config: Callable[..., Any]) -> None:
    mistral = LLMS.build(tiny_llm_config("mistral", sliding_window=16))
    assert mistral.config.sliding_window == 16
    gemma = LLMS.build(tiny_llm_config("gemma"))
    assert gemma.lm_head.weight is gemma.get_input_embeddings().weight


def test_attn_implementation_and_dtype(tiny_llm_config: Callable[..., Any]) -> None:
    model = LLMS.build(tiny_llm_config("llama", attn_implementation="eager", dtype="bfloat16"))
    assert model.config._attn_implementation == "eager"
    assert next(model.parameters()).dtype == torch.bfloat16


def test_load_pretrained_from_local_directory(tmp_path: Path, tiny_llm_config: Callable[..., Any]) -> None:
    original = LLMS.build(tiny_llm_config("qwen2"))
    original.save_pretrained(tmp_path / "qwen2")
    loaded = LLMS.build(tiny_llm_config("qwen2", pretrained=str(tmp_path / "qwen2")))
    for (name, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_pretrained_architecture_mismatch_is_a_config_error(
    tmp_path: Path, tiny_llm_config: Callable[..., Any]
) -> None:
    LLMS.build(tiny_llm_config("qwen2")).save_pretrained(tmp_path / "qwen2")
    with pytest.raises(ConfigError, match=r"holds a 'qwen2' model but model\.llm\.name is 'llama'"):
        LLMS.build(tiny_llm_config("llama", pretrained=str(tmp_path / "qwen2")))


def test_missing_pretrained_is_a_user_error(tmp_path: Path, tiny_llm_config: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError, match="is not a model directory"):
        LLMS.build(tiny_llm_config("llama", pretrained=str(tmp_path / "absent")))
    # a hub id with the hub offline: a clear error, no network attempt (the guard checks)
    with pytest.raises(UserError, match="cannot load LLM 'someone/some-model'"):
        LLMS.build(tiny_llm_config("llama", pretrained="someone/some-model"))


def test_trust_remote_code_is_off_by_default(tiny_llm_config: Callable[..., Any]) -> None:
    assert tiny_llm_config("llama").trust_remote_code is False
