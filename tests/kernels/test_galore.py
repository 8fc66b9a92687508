"""GaLore: low-rank updates, AdamW elsewhere, measured optimizer-state saving, training."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import build, loss_of, text_batch
from torch import nn

from mmpretrain.kernels.galore import GaLoreAdamW, galore_param_groups, optimizer_state_bytes


def test_update_of_a_selected_matrix_has_the_projection_rank() -> None:
    torch.manual_seed(0)
    wide, tall = nn.Linear(24, 8), nn.Linear(8, 24)
    for layer in (wide, tall):
        before = layer.weight.detach().clone()
        optimizer = GaLoreAdamW([{"params": [layer.weight], "rank": 3}], lr=0.1)
        layer(torch.randn(5, layer.in_features)).pow(2).sum().backward()
        optimizer.step()
        delta = layer.weight.detach() - before
        assert torch.linalg.matrix_rank(delta) == 3
        state = optimizer.state[layer.weight]
        short, long = sorted(layer.weight.shape)
        assert state["exp_avg"].shape in {(3, long), (long, 3)}
        assert state["projector"].shape == (short, 3)


def test_groups_without_rank_are_plain_adamw() -> None:
    torch.manual_seed(1)
    a, b = nn.Linear(6, 4), nn.Linear(6, 4)
    b.load_state_dict(a.state_dict())
    ours = GaLoreAdamW(a.parameters(), lr=0.01, weight_decay=0.1)
    reference = torch.optim.AdamW(b.parameters(), lr=0.01, weight_decay=0.1)
    for _ in range(3):
        x = torch.randn(3, 6)
        for layer, optimizer in ((a, ours), (b, reference)):
            layer(x).pow(2).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_optimizer_state_saving_is_measured_and_training_works() -> None:
    batch = text_batch()
    rank = 8
    results = {}
    for name in ("adamw", "galore"):
        torch.manual_seed(0)
        model = build("llama_tiny")
        if name == "adamw":
            optimizer: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        else:
            groups = galore_param_groups(
                model, ["llm.*.mlp.*", "llm.*.self_attn.*"], rank=rank, update_proj_gap=5
            )
            assert len(groups[0]["params"]) == 14
            optimizer = GaLoreAdamW(groups, lr=3e-3)
        losses = []
        for _ in range(15):
            loss = loss_of(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        results[name] = (optimizer_state_bytes(optimizer), losses)
    adamw_bytes, _ = results["adamw"]
    galore_bytes, galore_losses = results["galore"]
    assert galore_losses[-1] < galore_losses[0] - 0.3
    # the 14 matrices' moments shrink from 2*m*n to 2*r*max(m,n) plus an [min(m,n), r] projector
    model = build("llama_tiny")
    selected = [m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear) and "layers" in n]
    dense = sum(2 * w.numel() for w in selected) * 4
    low_rank = sum((2 * rank * max(w.shape) + rank * min(w.shape)) * 4 for w in selected)
    assert adamw_bytes - galore_bytes == pytest.approx(dense - low_rank, abs=64 * 4)
    assert galore_bytes < adamw_bytes
