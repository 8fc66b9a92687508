"""sparse24: exact 2:4 masks after every update, SR-STE / S-STE numerics, phases, export."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmpretrain.errors import ConfigError
from mmpretrain.kernels import apply_kernels, kernels_on_step
from mmpretrain.kernels.sparse24 import (
    Sparse24Config,
    Sparse24Linear,
    check_24_pattern,
    fitted_scale,
    is_24_sparse,
    mask_24,
    soft_threshold_24,
)


def exactly_two_of_four(mask: torch.Tensor) -> bool:
    rows, cols = mask.shape
    return bool((mask.reshape(rows, cols // 4, 4).sum(-1) == 2).all())


def layer(**options: object) -> Sparse24Linear:
    cfg = Sparse24Config(name="sparse24", **options)  # type: ignore[arg-type]
    return Sparse24Linear.from_linear(nn.Linear(32, 12), cfg, "test.fc")


def step_once(module: nn.Module, step: int, optimizer: torch.optim.Optimizer) -> None:
    module(torch.randn(6, 32)).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()
    kernels_on_step(module, step)


def test_mask_keeps_the_two_largest_of_each_group() -> None:
    weight = torch.tensor([[0.1, -0.9, 0.3, 0.2, 5.0, 4.0, -6.0, 0.0]])
    assert mask_24(weight).tolist() == [[False, True, True, False, True, False, True, False]]
    ties = torch.zeros(3, 8)  # all-equal groups still keep exactly 2
    assert exactly_two_of_four(mask_24(ties))


@pytest.mark.parametrize("variant", ["ste", "sr_ste", "s_ste"])
def test_masks_are_exactly_2_of_4_after_every_update(variant: str) -> None:
    torch.manual_seed(1)
    module = layer(variant=variant, update_every=1)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    masks = []
    for step in range(1, 13):
        step_once(module, step, optimizer)
        assert exactly_two_of_four(module.mask), step
        assert torch.equal(module.mask, mask_24(module.weight)), step  # recomputed from |w|
        effective = module.effective_weight()
        assert is_24_sparse(effective)
        check_24_pattern(effective)
        masks.append(module.mask.clone())
    assert any(not torch.equal(masks[0], m) for m in masks[1:])  # the mask does move


def test_mask_recomputed_only_every_n_steps() -> None:
    torch.manual_seed(2)
    module = layer(variant="ste", update_every=3)
    optimizer = torch.optim.SGD(module.parameters(), lr=2.0)
    previous = module.mask.clone()
    for step in range(1, 10):
        step_once(module, step, optimizer)
        if step % 3:
            assert torch.equal(module.mask, previous), step
        else:
            assert torch.equal(module.mask, mask_24(module.weight)), step
        previous = module.mask.clone()


def test_forward_is_the_masked_dense_matmul() -> None:
    module = layer(variant="ste")
    x = torch.randn(3, 5, 32)
    expected = F.linear(x, module.weight * module.mask, module.bias)
    torch.testing.assert_close(module(x), expected, rtol=0, atol=0)


def test_sr_ste_adds_decay_to_pruned_weights_gradient_only() -> None:
    torch.manual_seed(3)
    x = torch.randn(4, 32)
    ste, sr = layer(variant="ste"), layer(variant="sr_ste", decay=0.1)
    with torch.no_grad():
        sr.weight.copy_(ste.weight)
        sr.bias.copy_(ste.bias)  # type: ignore[union-attr]
        sr.mask.copy_(ste.mask)
    for module in (ste, sr):
        module(x).sum().backward()
    assert ste.weight.grad is not None and sr.weight.grad is not None
    # STE: the gradient of the masked matmul reaches every weight unchanged
    torch.testing.assert_close(ste.weight.grad, torch.ones(12, 4) @ x)
    extra = sr.weight.grad - ste.weight.grad
    torch.testing.assert_close(extra, 0.1 * (~sr.mask) * sr.weight.detach())
    assert torch.all(extra[sr.mask] == 0)


def test_s_ste_soft_thresholds_and_rescales() -> None:
    weight = torch.tensor([[4.0, -3.0, 1.0, 0.5], [0.2, -0.2, 2.0, 1.0]])
    projected = soft_threshold_24(weight)
    torch.testing.assert_close(projected, torch.tensor([[3.0, -2.0, 0.0, 0.0], [0.0, 0.0, 1.8, 0.8]]))
    beta = fitted_scale(weight, projected)
    # beta minimizes ||w - beta p||^2: the residual is orthogonal to p
    residual = weight - beta * projected
    assert abs(float((residual * projected).sum())) < 1e-5
    module = layer(variant="s_ste")
    expected_scale = fitted_scale(module.weight.detach(), soft_threshold_24(module.weight.detach()))
    assert float(module.scale) == pytest.approx(float(expected_scale))
    x = torch.randn(2, 32)
    expected = F.linear(x, module.scale * soft_threshold_24(module.weight.detach()), module.bias)
    torch.testing.assert_close(module(x), expected)
    module(x).sum().backward()  # straight-through gradient, times beta
    torch.testing.assert_close(module.weight.grad, module.scale * torch.ones(12, 2) @ x)


def test_dense_warmup_then_sparse_then_dense_finetune() -> None:
    torch.manual_seed(4)
    module = layer(variant="sr_ste", dense_warmup_steps=3, dense_finetune_from=7)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.3)
    x = torch.randn(2, 32)
    phases = []
    for step in range(1, 11):
        dense_out = F.linear(x, module.weight, module.bias)
        out = module(x)
        phases.append("dense" if torch.equal(out, dense_out) else "sparse")
        step_once(module, step, optimizer)
        if step == 7:  # the fine-tune starts from the sparse weight (no jump in the function)
            assert is_24_sparse(module.weight)
            assert torch.equal(module.weight * module.mask, module.weight)
    # steps 1-3 dense (warm-up), 4-7 sparse, 8+ dense
    assert phases == ["dense"] * 3 + ["sparse"] * 4 + ["dense"] * 3
    assert not module.sparse_now and not bool(module.active)


def test_phase_options_are_checked() -> None:
    with pytest.raises(ValueError, match="must come after"):
        Sparse24Config(name="sparse24", dense_warmup_steps=10, dense_finetune_from=5)
    with pytest.raises(ConfigError, match="not a multiple of 4"):
        Sparse24Linear.from_linear(nn.Linear(6, 4), Sparse24Config(name="sparse24"), "x.fc")


def test_pattern_check_names_the_bad_group() -> None:
    check_24_pattern(torch.tensor([[1.0, 0.0, 2.0, 0.0]]))
    with pytest.raises(ValueError, match=r"row 1, columns 4-7 have 3 non-zeros"):
        check_24_pattern(torch.tensor([[1.0, 0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 0]]), "w")


def test_cuda_backend_is_refused_without_the_hardware() -> None:
    cfg = Sparse24Config(name="sparse24", backend="cuda")
    with pytest.raises(ConfigError, match="backend cuda cannot run here"):
        Sparse24Linear.from_linear(nn.Linear(64, 64), cfg, "llm.fc")
    ok, reason = Sparse24Linear.cuda_support(torch.zeros(64, 64))
    assert not ok and "not on a CUDA device" in reason


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (sm80+) for semi-structured sparsity"
)
def test_cuda_semi_structured_forward_matches_emulation() -> None:
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("semi-structured sparse matmuls need compute capability 8.0+")
    linear = nn.Linear(128, 256).cuda()
    model = nn.Sequential(linear)
    apply_kernels(model, [{"match": "*", "kind": "sparse24", "variant": "ste"}])
    module = model[0]
    assert module.backend == "cuda"
    x = torch.randn(64, 128, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = module(x)
    reference = F.linear(x.bfloat16(), (module.weight * module.mask).bfloat16(), module.bias.bfloat16())
    torch.testing.assert_close(out.float(), reference.float(), rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert module.weight.grad is not None and torch.isfinite(module.weight.grad).all()
