"""bitnet: b1.58 numerics, the 16-bit to 1.58-bit transition, packed export and reload."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers import build, text_batch, train_steps
from safetensors.torch import load_file, save_file
from torch import nn

from mmpretrain.errors import UserError
from mmpretrain.kernels import kernel_modules, kernels_on_step
from mmpretrain.kernels.bitnet import (
    BitNetConfig,
    BitNetLinear,
    TernaryLinear,
    export_ternary,
    load_ternary,
    pack_ternary,
    quantize_activations,
    quantize_weight,
    unpack_ternary,
)


def layer(**options: object) -> BitNetLinear:
    cfg = BitNetConfig(name="bitnet", **options)  # type: ignore[arg-type]
    return BitNetLinear.from_linear(nn.Linear(16, 6), cfg, "test.fc")


def test_weights_are_ternary_times_absmean() -> None:
    weight = torch.tensor([[0.3, -0.05, -0.9, 0.0], [0.1, 0.2, -0.2, 0.45]])
    scale = weight.abs().mean() + 1e-5  # 0.275
    expected = torch.tensor([[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, -1.0, 1.0]]) * scale
    torch.testing.assert_close(quantize_weight(weight, 1e-5), expected)


def test_activations_are_8_bit_absmax_per_token() -> None:
    x = torch.tensor([[1.0, -0.5, 0.25, 0.001], [10.0, 3.3, -7.7, 0.0]])
    q = quantize_activations(x, 1e-5)
    for row in range(2):
        step = x[row].abs().max() / 127
        codes = q[row] / step
        torch.testing.assert_close(codes, codes.round(), atol=1e-4, rtol=0)  # on the 8-bit grid
        assert codes.abs().max() <= 127 + 1e-4
        assert (q[row] - x[row]).abs().max() <= step / 2 + 1e-6
    assert q[0, 0] == 1.0 and q[0, 3] == 0.0


def test_forward_and_straight_through_gradient() -> None:
    module = layer()
    x = torch.randn(3, 16, requires_grad=True)
    expected = F.linear(quantize_activations(x, 1e-5), quantize_weight(module.weight, 1e-5), module.bias)
    out = module(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out.sum().backward()
    q_w = quantize_weight(module.weight, 1e-5)
    torch.testing.assert_close(x.grad, torch.ones(3, 6) @ q_w)  # STE through the activation quantizer
    torch.testing.assert_close(module.weight.grad, torch.ones(6, 3) @ quantize_activations(x, 1e-5))


def test_transition_ramps_from_16_bit_to_ternary() -> None:
    torch.manual_seed(0)
    module = layer(transition_start=2, transition_steps=4)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    x = torch.randn(5, 16)
    mixes = []
    for step in range(1, 9):
        dense = F.linear(x, module.weight, module.bias)
        lam = module.mix
        out = module(x)
        if lam == 0.0:
            torch.testing.assert_close(out, dense, rtol=0, atol=0)
        else:
            w = (1 - lam) * module.weight + lam * quantize_weight(module.weight, 1e-5)
            x_mix = (1 - lam) * x + lam * quantize_activations(x, 1e-5)
            torch.testing.assert_close(out, F.linear(x_mix, w, module.bias))
        out.pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        kernels_on_step(module, step)
        mixes.append(module.mix)
    assert mixes == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert float(module.lam) == 1.0
    # the transition reached ternary weights: every effective value is -s, 0 or +s
    effective = module.effective_weight()
    scale = module.weight.detach().abs().mean() + 1e-5
    assert set((effective / scale).round().unique().tolist()) <= {-1.0, 0.0, 1.0}
    torch.testing.assert_close(effective, (effective / scale).round() * scale)


def test_pack_unpack_round_trip() -> None:
    codes = torch.randint(-1, 2, (7, 9), dtype=torch.int8)
    packed = pack_ternary(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == (63 + 3) // 4  # 2 bits per weight
    assert torch.equal(unpack_ternary(packed, (7, 9)), codes)
    with pytest.raises(ValueError, match="-1, 0, 1"):
        pack_ternary(torch.tensor([2], dtype=torch.int8))


def test_export_refuses_an_unfinished_transition() -> None:
    module = layer(transition_steps=10)
    with pytest.raises(UserError, match=r"transition is at 0\.000"):
        module.export()


def test_exported_ternary_model_reloads_to_the_same_logits(tmp_path: Path) -> None:
    rules = [{"match": "llm.*", "kind": "bitnet", "transition_steps": 4}]
    batch = text_batch()
    model = build("llama_tiny", rules)
    losses = train_steps(model, batch, 6)
    assert all(m.mix == 1.0 for _, m in kernel_modules(model))
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        expected = model(batch)
    packed = export_ternary(model)
    fqns = [name for name, _ in kernel_modules(model)]
    assert len(fqns) == 14
    weight_bytes = sum(t.numel() for k, t in packed.items() if k.endswith("weight_packed"))
    assert weight_bytes == sum(model.get_submodule(n).weight.numel() for n in fqns) // 4
    save_file(packed, str(tmp_path / "ternary.safetensors"))
    dense_rest = {k: v for k, v in model.state_dict().items() if not any(k.startswith(f + ".") for f in fqns)}
    save_file(dense_rest, str(tmp_path / "rest.safetensors"))

    reloaded = build("llama_tiny")  # a plain model, other random init
    assert load_ternary(reloaded, load_file(str(tmp_path / "ternary.safetensors"))) == 14
    missing, unexpected = reloaded.load_state_dict(
        load_file(str(tmp_path / "rest.safetensors")), strict=False
    )
    assert not unexpected
    assert all(any(m.startswith(f + ".") for f in fqns) for m in missing)  # only the packed layers
    assert isinstance(reloaded.get_submodule(fqns[0]), TernaryLinear)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(batch), expected)
