"""unstructured (SPDF): sparsity levels, static and cubic schedules, fixed vs re-selected
masks, densify."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmpretrain.kernels import kernels_on_step
from mmpretrain.kernels.unstructured import (
    UnstructuredConfig,
    UnstructuredLinear,
    magnitude_mask,
    target_sparsity,
)


def layer(**options: object) -> UnstructuredLinear:
    cfg = UnstructuredConfig(name="unstructured", **options)  # type: ignore[arg-type]
    return UnstructuredLinear.from_linear(nn.Linear(40, 25), cfg, "test.fc")


def pruned_fraction(module: UnstructuredLinear) -> float:
    return 1.0 - module.mask.float().mean().item()


def run(module: UnstructuredLinear, steps: range, lr: float = 0.1) -> list[float]:
    optimizer = torch.optim.SGD(module.parameters(), lr=lr)
    levels = []
    for step in steps:
        module(torch.randn(4, 40)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        kernels_on_step(module, step)
        levels.append(pruned_fraction(module))
    return levels


@pytest.mark.parametrize("sparsity", [0.5, 0.6, 0.75])
def test_static_sparsity_levels_and_zero_pruned_weights(sparsity: float) -> None:
    module = layer(sparsity=sparsity)
    assert pruned_fraction(module) == pytest.approx(sparsity, abs=1 / 1000)
    assert torch.all(module.weight[~module.mask] == 0)  # fixed masks: pruned weights are zero
    kept = module.weight.detach().abs()[module.mask]
    assert kept.min() > 0
    mask_before = module.mask.clone()
    run(module, range(1, 6))
    assert torch.equal(module.mask, mask_before)  # static + fixed: the mask never changes
    assert torch.all(module.weight[~module.mask] == 0)  # and pruned weights get no gradient
    x = torch.randn(3, 40)
    torch.testing.assert_close(
        module(x), F.linear(x, module.weight * module.mask, module.bias), rtol=0, atol=0
    )


def test_magnitude_mask_prunes_the_smallest() -> None:
    weight = torch.tensor([[0.1, -0.5, 0.3, -0.05]])
    assert magnitude_mask(weight, 0.5).tolist() == [[False, True, True, False]]
    previous = torch.tensor([[True, True, False, True]])
    assert magnitude_mask(weight, 0.5, previous).tolist() == [[True, True, False, False]]


def test_cubic_schedule_follows_zhu_and_gupta() -> None:
    cfg = UnstructuredConfig(
        name="unstructured",
        sparsity=0.75,
        schedule="gradual",
        initial_sparsity=0.1,
        ramp_start=10,
        ramp_steps=40,
    )
    assert target_sparsity(cfg, 0) == pytest.approx(0.1)
    assert target_sparsity(cfg, 10) == pytest.approx(0.1)
    assert target_sparsity(cfg, 30) == pytest.approx(0.75 + (0.1 - 0.75) * 0.5**3)
    assert target_sparsity(cfg, 50) == pytest.approx(0.75)
    assert target_sparsity(cfg, 500) == pytest.approx(0.75)
    levels = [target_sparsity(cfg, t) for t in range(0, 60)]
    assert levels == sorted(levels)  # monotone; steepest early (cubic)
    assert levels[12] - levels[11] > levels[48] - levels[47]
    static = UnstructuredConfig(name="unstructured", sparsity=0.6)
    assert target_sparsity(static, 0) == target_sparsity(static, 1000) == 0.6


def test_gradual_fixed_masks_only_prune_more() -> None:
    torch.manual_seed(0)
    module = layer(sparsity=0.7, schedule="gradual", ramp_steps=8, update_every=2)
    assert pruned_fraction(module) == 0.0
    previous = module.mask.clone()
    levels = run(module, range(1, 13))
    for step, level in enumerate(levels, start=1):
        if step % 2 == 0 and step <= 8:
            cfg = module.cfg
            assert level == pytest.approx(target_sparsity(cfg, step), abs=1 / 1000)
    assert levels[-1] == pytest.approx(0.7, abs=1 / 1000)
    assert levels == sorted(levels)
    assert torch.all(previous | ~module.mask)  # nothing pruned came back
    assert torch.all(module.weight[~module.mask] == 0)
    assert float(module.sparsity) == pytest.approx(0.7)


def test_reselected_masks_can_revive_weights() -> None:
    torch.manual_seed(1)
    module = layer(sparsity=0.5, reselect=True, update_every=1)
    first = module.mask.clone()
    levels = run(module, range(1, 30), lr=0.5)
    assert all(level == pytest.approx(0.5, abs=1 / 1000) for level in levels)
    assert torch.any(~first & module.mask)  # a pruned weight came back
    assert torch.any(module.weight[~module.mask] != 0)  # pruned weights keep their values
    x = torch.randn(2, 40)
    module(x).sum().backward()  # straight-through: the gradient reaches pruned weights
    assert module.weight.grad is not None and torch.all(module.weight.grad[~module.mask] != 0)


def test_densify_removes_the_mask_starting_from_the_sparse_weights() -> None:
    torch.manual_seed(2)
    module = layer(sparsity=0.6, reselect=True, update_every=1, densify_at=5)
    x = torch.randn(3, 40)
    for step in range(1, 5):
        run(module, range(step, step + 1))
    assert module.sparse_now
    sparse_out = module(x).detach()
    run(module, range(5, 6), lr=0.0)  # step 5 densifies (no weight change from the update)
    assert not module.sparse_now and not bool(module.active)
    torch.testing.assert_close(module(x), sparse_out, rtol=0, atol=1e-6)  # no jump
    run(module, range(6, 9))
    assert (module.weight != 0).float().mean() > 0.95  # pruned weights train again
    assert torch.equal(module.effective_weight(), module.weight.detach())
