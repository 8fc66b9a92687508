"""train.init_from: the loaded / new / unused report, weights + optimizer, vocabulary
extension (new rows at the mean, their Adam moments at zero), transformers directories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from recipe_helpers import TINY_LLM

from mmpretrain.config import validate_config
from mmpretrain.errors import UserError
from mmpretrain.model.build import build_model
from mmpretrain.model.config import ModelConfig
from mmpretrain.train.checkpoint import latest_checkpoint
from mmpretrain.train.config import OptimConfig
from mmpretrain.train.init_from import (
    _read_dcp_tensors,
    init_model_from,
    init_optimizer_from,
    resolve_init_checkpoint,
    run_dir_of,
)
from mmpretrain.train.optim import build_optimizer

VISION = {
    "encoders": {
        "vision": {
            "name": "hf_siglip",
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_layers": 1,
            "num_heads": 2,
        }
    },
    "connectors": {"image": {"name": "mlp"}},
}


def model_of(**fields: Any) -> Any:
    llm = {"name": "llama", **TINY_LLM, **fields.pop("llm", {})}
    return build_model(validate_config(ModelConfig, {"llm": llm, **fields}, "test"))


def test_weights_and_optimizer_state_are_loaded_and_reported(text_run: Path) -> None:
    checkpoint = resolve_init_checkpoint(text_run)
    assert checkpoint == latest_checkpoint(text_run) and run_dir_of(checkpoint) == text_run
    model = model_of()
    report = init_model_from(checkpoint, model, None)
    saved = _read_dcp_tensors(checkpoint, "model.")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert len(report.loaded) == len(saved) and not report.new and not report.unused
    assert (report.rows_kept, report.rows_new) == (320, 0)
    assert str(report).startswith(f"initialised the model from {checkpoint} (checkpoint; 21 tensors loaded")
    optimizer = build_optimizer(model, OptimConfig())
    line = init_optimizer_from(checkpoint, model, optimizer, None)
    assert "loaded for 21 parameters, fresh for 0" in line
    moments = _read_dcp_tensors(checkpoint, "optim.")
    names = {id(p): n for n, p in model.named_parameters()}
    for param, state in optimizer.state.items():
        for slot in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state[slot], moments[f"{names[id(param)]}.{slot}"]), (names[id(param)], slot)


def test_vocabulary_extension_rows_at_the_mean_and_moments_at_zero(text_run: Path) -> None:
    checkpoint = resolve_init_checkpoint(text_run)
    model = model_of(llm={"vocab_size": 336})
    report = init_model_from(checkpoint, model, None)
    assert (report.rows_kept, report.rows_new) == (320, 16)
    saved = _read_dcp_tensors(checkpoint, "model.")
    for name in ("llm.model.embed_tokens.weight", "llm.lm_head.weight"):
        table = model.state_dict()[name]
        assert torch.equal(table[:320], saved[name])
        assert torch.allclose(table[320:], saved[name].mean(dim=0).expand(16, -1))
    optimizer = build_optimizer(model, OptimConfig())
    init_optimizer_from(checkpoint, model, optimizer, None)
    moments = _read_dcp_tensors(checkpoint, "optim.")
    exp_avg = optimizer.state[model.llm.get_input_embeddings().weight]["exp_avg"]
    assert torch.equal(exp_avg[:320], moments["llm.model.embed_tokens.weight.exp_avg"])
    assert not exp_avg[320:].any()


def test_a_vlm_from_a_text_checkpoint_reports_new_parts_and_the_reverse_unused(
    text_run: Path, tmp_path: Path
) -> None:
    checkpoint = resolve_init_checkpoint(text_run)
    vlm = model_of(**VISION)
    report = init_model_from(checkpoint, vlm, None)
    assert report.new and all(n.startswith(("encoders.vision.", "connectors.image.")) for n in report.new)
    table = report.table()
    assert "encoders.vision" in table and "connectors.image" in table and "llm" in table
    # and back: a text model from the VLM's weights leaves the tower and connector unused
    from mmpretrain.model.pretrained import save_pretrained

    saved = save_pretrained(
        vlm,
        validate_config(ModelConfig, {"llm": {"name": "llama", **TINY_LLM}, **VISION}, "t"),
        tmp_path / "vlm",
    )
    text = model_of()
    back = init_model_from(resolve_init_checkpoint(saved), text, None)
    assert back.kind == "saved_model" and not back.new
    assert back.unused == sorted(report.new)
    with pytest.raises(UserError, match="model directory without optimizer state"):
        init_optimizer_from(saved, text, build_optimizer(text, OptimConfig()), None)


@pytest.mark.parametrize("tied", [False, True])
def test_a_transformers_directory_loads_into_the_llm(tmp_path: Path, tied: bool) -> None:
    source = model_of(llm={"tie_word_embeddings": tied})
    with torch.no_grad():
        for param in source.parameters():
            param.add_(torch.randn_like(param))
    source.llm.save_pretrained(tmp_path / "hf")  # config.json + model.safetensors
    target = model_of(llm={"tie_word_embeddings": tied})
    report = init_model_from(resolve_init_checkpoint(tmp_path / "hf"), target, None)
    assert report.kind == "transformers" and not report.new and not report.unused
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert run_dir_of(tmp_path / "hf") == tmp_path / "hf"


def test_not_a_source_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="neither a committed checkpoint nor a run directory"):
        resolve_init_checkpoint(tmp_path)
