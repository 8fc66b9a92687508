"""Text-only models -> the LLM's transformers ``*ForCausalLM``: loads offline with plain
transformers, same logits (fp32, 1e-4), generate runs; kernel kinds; unmappable models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_helpers import (
    assert_logits_close,
    build,
    export,
    llava_config,
    model_config,
    our_batch,
    our_logits,
)

from mmpretrain.data.tokenizer import TextTokenizer
from mmpretrain.export.importer import import_hf_model
from mmpretrain.export.mapping import UnmappableError, plan_hf_export

TEXT = "the red circle is a small shape."


@pytest.mark.parametrize(
    ("config", "overrides"),
    [
        ("models/llama_tiny", ()),
        ("models/qwen3_tiny", ()),
        ("models/gemma_tiny", ()),  # tied embeddings
        ("models/mistral_tiny", ("model.llm.sliding_window=4",)),
    ],
    ids=["llama", "qwen3", "gemma-tied", "mistral-window"],
)
def test_text_model_exports_to_its_causal_lm(
    config: str, overrides: tuple[str, ...], tokenizer: TextTokenizer, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = model_config(config, *overrides)
    model = build(cfg)
    target, _ = export(model, cfg, tokenizer, tmp_path)
    assert target == "causal_lm"
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    assert type(hf).__name__ == type(model.llm).__name__
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    inputs = hf_tokenizer(TEXT, return_tensors="pt")
    batch = our_batch(tokenizer, [TEXT])
    assert torch.equal(inputs["input_ids"], batch.input_ids)
    with torch.no_grad():
        theirs = hf(**inputs).logits
    assert_logits_close(our_logits(model, batch), theirs)
    generated = hf.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, batch.input_ids.shape[1] + 4)
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_id and generation["pad_token_id"] == tokenizer.pad_id
    config_json = json.loads((tmp_path / "config.json").read_text())
    assert "mmpt_attn_chunk" not in config_json and config_json["use_cache"] is True
    imported = import_hf_model(tmp_path)  # and back: the same architecture and tensors
    assert imported.config.llm.name == cfg.llm.name and imported.config.llm.pretrained is None
    back = imported.model.state_dict()
    assert all(torch.equal(tensor, back[name]) for name, tensor in model.state_dict().items())


def test_dtype_and_sharding(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    cfg = model_config("models/llama_tiny")
    model = build(cfg)
    export(model, cfg, tokenizer, tmp_path, dtype=torch.bfloat16, max_shard_size="200KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    with safe_open(str(tmp_path / shards[0]), framework="pt") as handle:
        assert handle.get_tensor(next(iter(handle.keys()))).dtype == torch.bfloat16
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True)
    assert hf.dtype == torch.bfloat16
    ours = model.llm.state_dict()
    for name, tensor in hf.state_dict().items():
        assert torch.equal(tensor, ours[name].to(torch.bfloat16)), name


def test_sparse_kinds_export_materialized(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    """2:4 sparsity is a masked weight: the export holds it dense, same logits."""
    from transformers import AutoModelForCausalLM

    cfg = model_config("models/llama_tiny", 'model.kernels=[{"match": "llm.*.mlp.*", "kind": "sparse24"}]')
    model = build(cfg)
    batch = our_batch(tokenizer, [TEXT])
    ours = our_logits(model, batch)
    export(model, cfg, tokenizer, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    with torch.no_grad():
        assert_logits_close(ours, hf(input_ids=batch.input_ids).logits)
    up = hf.model.layers[0].mlp.up_proj.weight.reshape(-1, 4)
    assert int((up != 0).sum(dim=1).max()) <= 2


def test_quantized_kinds_are_refused_with_the_parts(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    cfg = model_config("models/llama_tiny", 'model.kernels=[{"match": "llm.*.self_attn.*", "kind": "fp8"}]')
    model = build(cfg)
    with pytest.raises(UnmappableError) as info:
        plan_hf_export(cfg, model)
    message = str(info.value)
    assert "llm.model.layers.0.self_attn.q_proj and 7 more" in message
    assert "kernel kind fp8" in message and "--to safetensors" in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ('model.encoders.vision={"name": "timm", "model": "vit_tiny_patch16_224"}',),
            ["encoders.vision (timm): no transformers vision-language class"],
        ),
        (
            (
                'model.connectors.image={"name": "perceiver_resampler", "num_latents": 4, '
                '"depth": 1, "heads": 2}',
            ),
            ["connectors.image (perceiver_resampler): no transformers class has this connector"],
        ),
        (
            ('model.encoders.vision.tiling={"grid_options": [[1, 1], [1, 2]]}',),
            ["encoders.vision (hf_siglip): any-resolution tiling"],
        ),
    ],
    ids=["timm", "resampler", "tiling"],
)
def test_unmappable_configs_list_their_parts(overrides: tuple[str, ...], expected: list[str]) -> None:
    cfg = llava_config("hf_siglip", *overrides)
    with pytest.raises(UnmappableError) as info:
        plan_hf_export(cfg)
    for text in expected:
        assert text in str(info.value)
    assert "mmpt export CHECKPOINT --to safetensors --out DIR" in str(info.value)


def test_omni_model_lists_every_part() -> None:
    cfg = model_config("models/omni_tiny")
    with pytest.raises(UnmappableError) as info:
        plan_hf_export(cfg)
    parts = [part for part, _ in info.value.parts]
    assert parts == ["encoders", "encoders.speech (hf_whisper)", "connectors.audio (frame_stack_mlp)"]
    assert "images and audio in one model" in str(info.value)
