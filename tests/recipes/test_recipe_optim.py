"""Per-group learning-rate multipliers: which key wins, the groups they make, and that a
scaled group steps exactly like plain AdamW at the scaled learning rate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmpretrain.train.config import OptimConfig
from mmpretrain.train.optim import GroupScaledAdamW, build_optimizer, lr_multiplier, parameter_groups


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.llm = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4))
        self.connectors = nn.ModuleDict({"image": nn.Linear(4, 4)})
        self.encoders = nn.ModuleDict({"vision": nn.Linear(4, 4)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.llm[0](x)
        return self.llm[1](self.connectors["image"](self.encoders["vision"](h))).sum()


def test_the_longest_matching_key_wins() -> None:
    keys = {"llm": 1.0, "*.mlp.*": 0.5, "connectors": 10.0, "connectors.audio": 3.0, "encoders": 0.1}
    assert lr_multiplier("llm.model.layers.0.mlp.up_proj.weight", keys) == (0.5, "*.mlp.*")
    assert lr_multiplier("llm.model.embed_tokens.weight", keys) == (1.0, "llm")
    assert lr_multiplier("connectors.audio.linear_1.weight", keys) == (3.0, "connectors.audio")
    assert lr_multiplier("connectors.image.linear_1.weight", keys) == (10.0, "connectors")
    assert lr_multiplier("encodersX.weight", keys) == (1.0, None)  # a prefix ends at a dot
    assert lr_multiplier("anything", {}) == (1.0, None)


def test_groups_without_multipliers_are_unchanged() -> None:
    groups = parameter_groups(Tiny(), 0.1)
    assert [sorted(g) for g in groups] == [["params", "weight_decay"]] * 2
    assert [len(g["params"]) for g in groups] == [3, 4]  # matrices; embedding + biases
    assert type(build_optimizer(Tiny(), OptimConfig())) is torch.optim.AdamW


def test_multipliers_split_groups_and_warn_on_unmatched_keys(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = OptimConfig(lr_multipliers={"connectors": 10.0, "encoders": 0.1, "projector": 2.0})
    optimizer = build_optimizer(Tiny(), cfg)
    assert isinstance(optimizer, GroupScaledAdamW)
    scales = sorted((g["lr_scale"], g["weight_decay"], len(g["params"])) for g in optimizer.param_groups)
    assert scales == [
        (0.1, 0.0, 1),
        (0.1, 0.1, 1),
        (1.0, 0.0, 2),
        (1.0, 0.1, 1),
        (10.0, 0.0, 1),
        (10.0, 0.1, 1),
    ]
    assert "'projector' matches no trainable parameter" in capsys.readouterr().err


def test_a_scaled_group_steps_like_adamw_at_the_scaled_lr() -> None:
    torch.manual_seed(0)
    scaled, plain = Tiny(), Tiny()
    plain.load_state_dict(scaled.state_dict())
    encoder_before = scaled.encoders["vision"].weight.detach().clone()
    cfg = OptimConfig(lr=0.01, lr_multipliers={"connectors": 10.0, "encoders": 0.0})
    first = build_optimizer(scaled, cfg)
    groups = parameter_groups(plain, cfg.weight_decay, cfg.lr_multipliers)
    for group in groups:  # the same groups, each at its scaled lr, in plain AdamW
        group["lr"] = 0.01 * group.pop("lr_scale")
    second = torch.optim.AdamW(groups, lr=0.01, betas=cfg.betas, eps=cfg.eps, fused=True)
    x = torch.randint(0, 10, (3, 2))
    for _ in range(3):
        for group in first.param_groups:
            group["lr"] = 0.01  # as the loop sets the scheduled lr
        for model, optimizer in ((scaled, first), (plain, second)):
            model(x).backward()
            optimizer.step()
            optimizer.zero_grad()
    assert all(group["lr"] == 0.01 for group in first.param_groups)  # the logged lr is the base lr
    for (name, a), b in zip(scaled.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(scaled.encoders["vision"].weight, encoder_before)  # x 0: unchanged
    assert not torch.equal(scaled.connectors["image"].weight, Tiny().connectors["image"].weight)
