"""The low-precision kinds (fp8, int8, mxfp4, nvfp4): numerics, gradients, state, training."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from kernel_helpers import build as build_tiny
from kernel_helpers import loss_of, model_config, text_batch, train_steps, vlm_batch
from torch import nn

from mmpretrain.errors import ConfigError
from mmpretrain.kernels import formats, kernel_modules
from mmpretrain.kernels.fp4 import Mxfp4Config, Mxfp4Linear, Nvfp4Config, Nvfp4Linear
from mmpretrain.kernels.fp8 import Fp8Config, Fp8Linear
from mmpretrain.kernels.int8 import Int8Config, Int8Linear
from mmpretrain.kernels.quantized import QuantizedLinear
from mmpretrain.train.checkpoint import load_checkpoint, save_checkpoint

KINDS: dict[str, tuple[type[QuantizedLinear], Any]] = {
    "fp8": (Fp8Linear, Fp8Config(name="fp8")),
    "fp8_rowwise": (Fp8Linear, Fp8Config(name="fp8", scaling="rowwise")),
    "int8": (Int8Linear, Int8Config(name="int8")),
    "int8_sr": (Int8Linear, Int8Config(name="int8", stochastic_rounding=True)),
    "mxfp4": (Mxfp4Linear, Mxfp4Config(name="mxfp4")),
    "nvfp4": (Nvfp4Linear, Nvfp4Config(name="nvfp4")),
}
# Relative error of the layer output vs dense on Gaussian data: a few half-ulps of the format.
FORWARD_TOLERANCE = {
    "fp8": 0.06,
    "fp8_rowwise": 0.06,
    "int8": 0.02,
    "int8_sr": 0.02,
    "mxfp4": 0.3,
    "nvfp4": 0.2,
}
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


def build(kind: str, in_features: int = 96, out_features: int = 80, seed: int = 0) -> tuple[nn.Linear, Any]:
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features)
    cls, cfg = KINDS[kind]
    return linear, cls.from_linear(linear, cfg, f"llm.layers.0.{kind}")


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("kind", list(KINDS))
def test_forward_is_the_quantized_matmul_and_close_to_dense(kind: str) -> None:
    linear, layer = build(kind)
    assert layer.weight is linear.weight and layer.bias is linear.bias and layer.backend == "emulate"
    x = torch.randn(3, 10, 96)
    with torch.no_grad():
        out, dense = layer(x), linear(x)
        x_q = layer.quantize(x.reshape(-1, 96), "input", "fprop", None)
        w_q = layer.quantize(linear.weight, "weight", "fprop", None)
        expected = (x_q @ w_q.t()).reshape(3, 10, 80) + linear.bias
    assert out.shape == dense.shape and out.dtype == dense.dtype
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert 0 < relative(out, dense) < FORWARD_TOLERANCE[kind]


@pytest.mark.parametrize("kind", list(KINDS))
def test_gradients_flow_and_approximate_dense(kind: str) -> None:
    linear, layer = build(kind)
    reference = copy.deepcopy(linear)
    x = torch.randn(64, 96, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    target = torch.randn(64, 80)
    ((layer(x) - target) ** 2).mean().backward()
    ((reference(x_ref) - target) ** 2).mean().backward()
    assert linear.weight.grad is not None and x.grad is not None and linear.bias.grad is not None
    assert torch.isfinite(linear.weight.grad).all() and torch.isfinite(x.grad).all()
    # Gradients are quantized too (twice the forward's error budget, 4-bit ones more).
    assert relative(linear.weight.grad, reference.weight.grad) < 2 * FORWARD_TOLERANCE[kind]
    assert relative(x.grad, x_ref.grad) < 2 * FORWARD_TOLERANCE[kind]
    assert relative(linear.bias.grad, reference.bias.grad) < 2 * FORWARD_TOLERANCE[kind]


def test_fp8_gradients_are_e5m2_products() -> None:
    linear, layer = build("fp8")
    x = torch.randn(32, 96, requires_grad=True)
    grad_out = torch.randn(32, 80)
    layer(x).backward(grad_out)
    g = formats.fake_quantize_fp8(grad_out, "e5m2")
    w = formats.fake_quantize_fp8(linear.weight.detach(), "e4m3")
    x_q = formats.fake_quantize_fp8(x.detach(), "e4m3")
    torch.testing.assert_close(x.grad, g @ w, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(linear.weight.grad, g.t() @ x_q, rtol=1e-6, atol=1e-6)
    assert torch.equal(linear.bias.grad, grad_out.sum(0))  # the bias stays in full precision


def test_fp8_rowwise_survives_an_outlier_row() -> None:
    _, tensorwise = build("fp8")
    _, rowwise = build("fp8_rowwise")
    x = torch.randn(16, 96)
    x[0] *= 1e6  # one outlier token flushes the others to zero under one tensor scale
    with torch.no_grad():
        dense = nn.functional.linear(x, tensorwise.weight, tensorwise.bias)
        rows = slice(1, None)
        assert relative(rowwise(x)[rows], dense[rows]) < 0.06
        assert relative(tensorwise(x)[rows], dense[rows]) > 0.5


@pytest.mark.parametrize("kind", ["fp8", "int8", "mxfp4", "nvfp4"])
def test_weight_scales_follow_the_format(kind: str) -> None:
    linear, layer = build(kind)
    layer(torch.randn(4, 96))
    w = linear.weight.detach()
    if kind == "fp8":
        assert torch.equal(layer.weight_scale, (w.abs().amax() / 448.0).reshape(1))
    elif kind == "int8":
        assert layer.weight_scale.shape == (3, 3)  # ceil(80/32) x ceil(96/32)
        assert torch.allclose(layer.weight_scale[0, 0], w[:32, :32].abs().max() / 127)
    elif kind == "mxfp4":
        scale = layer.weight_scale
        assert scale.shape == (80, 3) and torch.equal(torch.exp2(torch.log2(scale).round()), scale)
        ratio = w.abs().reshape(80, 3, 32).amax(-1) / scale
        assert ((ratio >= 4) & (ratio < 8)).all()  # amax / 2^(floor(log2 amax) - 2)
    else:
        assert layer.weight_block_scale.shape == (80, 6) and layer.weight_tensor_scale.shape == (1,)
        assert torch.equal(formats.round_to_fp8(layer.weight_block_scale, "e4m3"), layer.weight_block_scale)
        assert torch.allclose(layer.weight_tensor_scale, w.abs().max() / 2688)


@pytest.mark.parametrize("kind", list(KINDS))
def test_state_dict_restores_scales_and_rounding_state_exactly(kind: str) -> None:
    _, layer = build(kind, seed=0)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)

    def step(module: nn.Module) -> torch.Tensor:
        module.zero_grad()
        torch.manual_seed(1)
        module(torch.randn(8, 96)).pow(2).mean().backward()
        return module.weight.grad.clone()

    for _ in range(3):
        step(layer)
        optimizer.step()
    layer(torch.randn(2, 96))  # scales of the current weight
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    assert {"weight", "bias"} < set(state) and len(state) > 2
    if "stochastic_rounding" in type(KINDS[kind][1]).model_fields:
        assert "grad_rounding_calls" in state
    expected_grad = step(layer)

    _, fresh = build(kind, seed=123)  # other weights, fresh state
    fresh.load_state_dict(state)
    for name, value in state.items():
        assert torch.equal(fresh.state_dict()[name], value), name
    assert torch.equal(step(fresh), expected_grad)  # stochastic rounding resumes its stream


def test_stochastic_rounding_draws_new_noise_every_backward_pass() -> None:
    _, layer = build("nvfp4")
    x, grad_out = torch.randn(8, 96), torch.randn(8, 80)
    grads = []
    for _ in range(2):
        layer.zero_grad()
        layer(x).backward(grad_out)
        grads.append(layer.weight.grad.clone())
    assert not torch.equal(grads[0], grads[1]) and int(layer.grad_rounding_calls) == 2
    _, nearest = build("int8")
    for _ in range(2):
        nearest.zero_grad()
        nearest(x).backward(grad_out)
        grads.append(nearest.weight.grad.clone())
    assert torch.equal(grads[2], grads[3])


def test_fp4_without_quantized_backward_uses_full_precision_gradients() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 32, bias=False)
    layer = Mxfp4Linear.from_linear(linear, Mxfp4Config(name="mxfp4", quantize_backward=False), "m")
    x = torch.randn(16, 64, requires_grad=True)
    grad_out = torch.randn(16, 32)
    layer(x).backward(grad_out)
    w_q = formats.fake_quantize_mxfp4(linear.weight.detach())
    x_q = formats.fake_quantize_mxfp4(x.detach())
    torch.testing.assert_close(x.grad, grad_out @ w_q, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(linear.weight.grad, grad_out.t() @ x_q, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["fp8", "int8", "mxfp4", "nvfp4"])
def test_materialize_gives_the_dequantized_weight(kind: str) -> None:
    linear, layer = build(kind)
    plain = layer.materialize()
    assert type(plain) is nn.Linear and plain.weight is not linear.weight
    expected = layer.quantize(linear.weight.detach(), "weight", "fprop", None)
    assert torch.equal(plain.weight, expected) and torch.equal(plain.bias, linear.bias)
    assert not torch.equal(plain.weight, linear.weight)


def test_autocast_output_takes_the_autocast_dtype_with_fp32_numerics() -> None:
    _, layer = build("fp8")
    x = torch.randn(4, 96)
    with torch.no_grad():
        full = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = layer(x)
    assert low.dtype == torch.bfloat16
    assert torch.equal(low, (full - layer.bias).to(torch.bfloat16) + layer.bias.to(torch.bfloat16))


def test_cuda_backend_is_chosen_only_where_it_can_run() -> None:
    linear, layer = build("fp8")
    assert layer.backend == "emulate"
    ok, reason = Fp8Linear.cuda_support(linear.weight)
    assert not ok and reason
    cfg = Fp8Config(name="fp8", backend="cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="backend cuda cannot run here"):
            Fp8Linear.from_linear(nn.Linear(32, 32), cfg, "llm.x")
    assert Int8Linear.backends == ("emulate",) and "cuda" in Fp8Linear.backends


def scaled_mm_runs_on_cpu() -> bool:
    try:
        one = torch.ones(16, 16).to(torch.float8_e4m3fn)
        torch._scaled_mm(one, one.t(), scale_a=torch.tensor(1.0), scale_b=torch.tensor(1.0))
    except (RuntimeError, NotImplementedError, AttributeError):
        return False
    return True


@pytest.mark.skipif(not scaled_mm_runs_on_cpu(), reason="this torch has no CPU torch._scaled_mm")
@pytest.mark.parametrize("scaling", ["tensorwise", "rowwise"])
def test_the_scaled_mm_calls_of_the_cuda_path_match_emulation(scaling: str) -> None:
    """The cuda backend's torch._scaled_mm calls (operand layouts, scale shapes, padding to
    multiples of 16), run through torch's CPU implementation: the same numbers as emulation
    (rowwise returns bf16, as CUDA's row-wise kernel does)."""
    linear, layer = build("fp8" if scaling == "tensorwise" else "fp8_rowwise")
    x = torch.randn(37, 96, requires_grad=True)  # 37 rows: padded to 48 for _scaled_mm
    grad_out = torch.randn(37, 80)
    outputs = []
    for backend in ("emulate", "cuda"):
        layer.backend = backend  # force the path; select_backend would pick emulate on a CPU
        x.grad = linear.weight.grad = None
        out = layer(x)
        out.backward(grad_out)
        outputs.append((out.detach(), x.grad.clone(), linear.weight.grad.clone()))
    tolerance = 0.0 if scaling == "tensorwise" else 4e-3  # bf16 rounding of rowwise outputs
    for emulated, real in zip(*outputs, strict=True):
        assert relative(real, emulated) <= tolerance


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("scaling", ["tensorwise", "rowwise"])
def test_fp8_cuda_backend_matches_emulation(scaling: str) -> None:
    ok, reason = Fp8Linear.cuda_support(torch.empty(64, 64, device="cuda"))
    if not ok:
        pytest.skip(reason)
    torch.manual_seed(0)
    linear = nn.Linear(128, 64).cuda()
    emulated = Fp8Linear.from_linear(linear, Fp8Config(name="fp8", scaling=scaling, backend="emulate"), "e")
    real = Fp8Linear.from_linear(linear, Fp8Config(name="fp8", scaling=scaling), "r")
    if real.backend != "cuda":
        pytest.skip(f"{scaling} fp8 needs a newer GPU")
    x = torch.randn(40, 128, device="cuda", requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    out_real, out_emulated = real(x), emulated(x2)
    torch.testing.assert_close(out_real, out_emulated, rtol=1e-2, atol=1e-2)
    out_real.sum().backward()
    torch.testing.assert_close(x.grad, torch.autograd.grad(out_emulated.sum(), x2)[0], rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------------------- training

TRAIN_KINDS = {
    "fp8": {"kind": "fp8"},
    "fp8_rowwise": {"kind": "fp8", "scaling": "rowwise"},
    "int8": {"kind": "int8", "stochastic_rounding": True},
    "mxfp4": {"kind": "mxfp4"},
    "nvfp4": {"kind": "nvfp4"},
}


def train_rules(options: dict[str, Any]) -> list[dict[str, Any]]:
    """One list for both models (`model.kernels`): the LLM's Linears and any connector."""
    return [{"match": "llm.*.mlp.*", **options}, {"match": ["llm.*.self_attn.*", "connectors.*"], **options}]


@pytest.mark.parametrize("model_name", ["llama_tiny", "vlm_tiny"])
@pytest.mark.parametrize("kind", list(TRAIN_KINDS))
def test_each_kind_trains_a_tiny_text_model_and_a_tiny_vlm(kind: str, model_name: str) -> None:
    model = build_tiny(model_name, train_rules(TRAIN_KINDS[kind]))
    swapped = dict(kernel_modules(model))
    assert len(swapped) == 14 + 2 * (model_name == "vlm_tiny")  # 2 x (4 attention + 3 MLP) + connector
    assert {m.kind for m in swapped.values()} == {TRAIN_KINDS[kind]["kind"]}
    assert not any("lm_head" in name or "embed" in name for name in swapped)
    batch = text_batch() if model_name == "llama_tiny" else vlm_batch(model_config(model_name))
    losses = train_steps(model, batch, 20)
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses


def test_checkpoint_keeps_scales_and_rounding_counters_and_resumes_exactly(tmp_path: Path) -> None:
    """Through the real checkpoint format (DCP + safetensors)."""
    rules = [
        {"match": "llm.*.mlp.*", "kind": "fp8", "scaling": "rowwise"},
        {"match": "llm.*.self_attn.[qk]_proj", "kind": "nvfp4"},
        {"match": "llm.*", "kind": "int8", "stochastic_rounding": True},
    ]
    batch = text_batch()
    model = build_tiny("llama_tiny", rules)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_steps(model, batch, 3)
    path = save_checkpoint(tmp_path, 3, model, optimizer, {}, keep_last=1)
    resumed = build_tiny("llama_tiny", rules)
    load_checkpoint(path, resumed, torch.optim.AdamW(resumed.parameters(), lr=1e-3))
    saved, loaded = model.state_dict(), resumed.state_dict()
    assert any(k.endswith("weight_block_scale") for k in saved) and any(
        k.endswith("grad_rounding_calls") for k in saved
    )
    for key in saved:
        assert saved[key].dtype == loaded[key].dtype and torch.equal(saved[key], loaded[key]), key
    with torch.no_grad():
        assert torch.equal(loss_of(model.eval(), batch), loss_of(resumed.eval(), batch))
    assert train_steps(model, batch, 2) == train_steps(resumed, batch, 2)  # same rounding noise
