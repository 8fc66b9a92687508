"""apply_kernels on a real tiny model: same Parameters, exact save/resume, materialize."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kernel_helpers import build, loss_of, text_batch, train_steps
from torch import nn

from mmpretrain.kernels import (
    KernelLinear,
    apply_kernels,
    kernel_modules,
    kernel_rows,
    materialize_kernels,
    select_backends,
)
from mmpretrain.kernels.sparse24 import is_24_sparse
from mmpretrain.model.build import build_model
from mmpretrain.train.checkpoint import load_checkpoint, save_checkpoint

RULES = {
    "sparse24": [{"match": "llm.*", "kind": "sparse24", "variant": "sr_ste", "update_every": 2}],
    "s_ste": [{"match": "llm.*", "kind": "sparse24", "variant": "s_ste"}],
    "unstructured": [
        {
            "match": "llm.*",
            "kind": "unstructured",
            "sparsity": 0.6,
            "schedule": "gradual",
            "ramp_steps": 4,
            "update_every": 1,
            "reselect": True,
        }
    ],
    "bitnet": [{"match": "llm.*", "kind": "bitnet", "transition_steps": 6}],
}


def test_swap_keeps_the_same_parameter_objects_and_names() -> None:
    dense = build("llama_tiny")
    before = dict(dense.named_parameters())
    linears = {n: m for n, m in dense.named_modules() if isinstance(m, nn.Linear)}
    rows = apply_kernels(
        dense, [{"match": "llm.*.mlp.*", "kind": "sparse24"}, {"match": "llm.*", "kind": "bitnet"}]
    )
    after = dict(dense.named_parameters())
    assert list(after) == list(before)
    assert all(after[name] is before[name] for name in before)
    for row in rows:
        new = dense.get_submodule(row.fqn)
        assert isinstance(new, KernelLinear)
        assert new.weight is linears[row.fqn].weight
        assert new.bias is linears[row.fqn].bias
    assert {r.kind for r in rows} == {"sparse24", "bitnet"}
    assert len(rows) == 2 * 7  # 2 layers x (3 mlp + 4 attention); lm_head stays dense
    assert isinstance(dense.llm.lm_head, nn.Linear) and not isinstance(dense.llm.lm_head, KernelLinear)
    # the buffers are in the state dict next to the unchanged parameter names
    keys = set(dense.state_dict())
    assert "llm.model.layers.0.mlp.up_proj.mask" in keys
    assert "llm.model.layers.1.self_attn.q_proj.lam" in keys


def test_model_config_kernels_are_applied_by_build_model() -> None:
    model = build("llama_tiny", RULES["sparse24"])
    rows = kernel_rows(model)
    assert len(rows) == 14 and {r.backend for r in rows} == {"emulate"}
    assert select_backends(model) == rows  # CPU: emulation stays


@pytest.mark.parametrize("kind", sorted(RULES))
def test_state_dict_round_trip_is_exact(kind: str) -> None:
    batch = text_batch()
    trained = build("llama_tiny", RULES[kind])
    train_steps(trained, batch, 3)
    fresh = build("llama_tiny", RULES[kind])
    fresh.load_state_dict(trained.state_dict())
    for (name, a), (_, b) in zip(kernel_modules(trained), kernel_modules(fresh), strict=True):
        for key, value in a.state_dict().items():
            assert torch.equal(value, b.state_dict()[key]), f"{name}.{key}"
        assert vars(a).get("sparse_now") == vars(b).get("sparse_now")
        assert vars(a).get("mix") == vars(b).get("mix")
    with torch.no_grad():
        assert torch.equal(loss_of(trained.eval(), batch), loss_of(fresh.eval(), batch))
    # and both continue identically
    assert train_steps(trained.train(), batch, 3) == train_steps(fresh.train(), batch, 3)


def test_checkpoint_files_keep_masks_and_scales_exactly(tmp_path: Path) -> None:
    """Through the real checkpoint format (DCP + safetensors): bool masks, scales, mixes."""
    rules = [
        {"match": "llm.*.mlp.*", "kind": "sparse24", "variant": "s_ste"},
        {"match": "llm.*.self_attn.[qk]_proj", "kind": "unstructured", "sparsity": 0.7},
        {"match": "llm.*", "kind": "bitnet", "transition_steps": 8},
    ]
    batch = text_batch()
    model = build("llama_tiny", rules)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_steps(model, batch, 3)
    path = save_checkpoint(tmp_path, 3, model, optimizer, {}, keep_last=1)
    resumed = build("llama_tiny", rules)
    load_checkpoint(path, resumed, torch.optim.AdamW(resumed.parameters(), lr=1e-3))
    saved, loaded = model.state_dict(), resumed.state_dict()
    for key in saved:
        assert saved[key].dtype == loaded[key].dtype and torch.equal(saved[key], loaded[key]), key
    assert resumed.llm.model.layers[0].self_attn.o_proj.mix == pytest.approx(3 / 8)
    with torch.no_grad():
        assert torch.equal(loss_of(model.eval(), batch), loss_of(resumed.eval(), batch))


def test_materialize_gives_plain_linears_with_the_effective_weights() -> None:
    batch = text_batch()
    model = build("llama_tiny", [{"match": "llm.*", "kind": "sparse24", "variant": "ste"}])
    train_steps(model, batch, 2)
    with torch.no_grad():
        expected = loss_of(model.eval(), batch)
    assert materialize_kernels(model) == 14
    assert not list(kernel_modules(model))
    for name, module in model.named_modules():
        if "layers" in name and isinstance(module, nn.Linear):
            assert type(module) is nn.Linear and is_24_sparse(module.weight), name
    with torch.no_grad():
        torch.testing.assert_close(loss_of(model, batch), expected, rtol=0, atol=1e-6)


def test_frozen_parts_stay_frozen_after_the_swap() -> None:
    from kernel_helpers import model_config

    cfg = model_config("vlm_tiny", [{"match": ["encoders.*", "connectors.*"], "kind": "bitnet"}])
    cfg = type(cfg).model_validate({**cfg.model_dump(mode="json"), "trainable": {"encoders": False}})
    model = build_model(cfg)
    rows = kernel_rows(model)
    assert any(r.fqn.startswith("encoders.vision") for r in rows)
    assert any(r.fqn.startswith("connectors.image") for r in rows)
    assert not any(p.requires_grad for p in model.encoders.parameters())
    assert all(p.requires_grad for p in model.connectors.parameters())
