"""GaLore: AdamW with low-rank gradient projection for selected weight matrices.

GaLore (Zhao et al. 2024, "GaLore: memory-efficient LLM training by gradient low-rank
projection") keeps Adam's moments in a rank-``r`` subspace of each selected matrix's
gradient. For a ``[m, n]`` weight with ``m <= n`` the projector ``P`` (``[m, r]``) holds the
top-``r`` left singular vectors of the gradient, recomputed every ``update_proj_gap``
steps; Adam runs on ``P^T G`` (``[r, n]``) and the normalized update is projected back,
``W -= lr * scale * P @ N`` (with ``m > n`` the right singular vectors are used, on the
other side). Optimizer state per matrix: ``2 r n + m r`` numbers instead of AdamW's
``2 m n``. Every other parameter gets plain AdamW.

This is an optimizer, not a Linear kind: :func:`galore_param_groups` selects matrices by
the same FQN globs as kernel rules, and :func:`optimizer_state_bytes` measures the saving.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import Tensor, nn


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW whose param groups with a ``rank`` key project 2-D gradients to that rank."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        rank: int | None = None,
        update_proj_gap: int = 200,
        scale: float = 0.25,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "rank": rank,
            "update_proj_gap": update_proj_gap,
            "scale": scale,
        }
        super().__init__(params, defaults)

    @staticmethod
    def _projector(grad: Tensor, rank: int) -> Tensor:
        """Top-``rank`` singular vectors of ``grad`` on its shorter side."""
        u, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
        if grad.shape[0] <= grad.shape[1]:
            return u[:, :rank].contiguous()  # [m, r]
        return vh[:rank].t().contiguous()  # [n, r]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float()
                state = self.state[p]
                low_rank = group["rank"] is not None and p.ndim == 2 and group["rank"] < min(p.shape)
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                step = int(state["step"])
                if low_rank:
                    wide = p.shape[0] <= p.shape[1]
                    if step % group["update_proj_gap"] == 0:
                        state["projector"] = self._projector(grad, group["rank"])
                    projector = state["projector"]
                    grad = projector.t() @ grad if wide else grad @ projector
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(grad)
                    state["exp_avg_sq"] = torch.zeros_like(grad)
                state["step"] += 1
                step += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq / (1 - beta2**step)).sqrt_().add_(group["eps"])
                update = (exp_avg / (1 - beta1**step)) / denom
                if low_rank:
                    update = projector @ update if wide else update @ projector.t()
                    update = update * group["scale"]
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-group["lr"])
        return loss


def galore_param_groups(
    model: nn.Module,
    match: Sequence[str],
    rank: int,
    update_proj_gap: int = 200,
    scale: float = 0.25,
    exclude: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Two param groups: the weights of Linear modules (kernel kinds included) whose FQN
    matches ``match`` and no ``exclude`` (low-rank), and every other trainable parameter."""
    chosen: list[Tensor] = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        is_linear = isinstance(module, nn.Linear) or hasattr(module, "in_features")
        if not (is_linear and isinstance(weight, Tensor) and weight.ndim == 2 and weight.requires_grad):
            continue
        if any(fnmatchcase(name, g) for g in match) and not any(fnmatchcase(name, g) for g in exclude):
            chosen.append(weight)
    chosen_ids = {id(p) for p in chosen}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen_ids]
    return [
        {"params": chosen, "rank": rank, "update_proj_gap": update_proj_gap, "scale": scale},
        {"params": rest, "rank": None},
    ]


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's state tensors (moments, projectors, step counters)."""
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, Tensor)
    )
