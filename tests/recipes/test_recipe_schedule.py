"""Learning-rate schedules at key steps: cosine, wsd (fraction, steps, shapes), constant
with and without cooldown, a cooldown branched from a stable-phase checkpoint, re-warming."""

from __future__ import annotations

import math

import pytest

from mmpretrain.train.config import OptimConfig
from mmpretrain.train.schedule import decay_progress, describe_schedule, lr_at


def optim(**fields: object) -> OptimConfig:
    return OptimConfig.model_validate({"lr": 1.0, "min_lr_ratio": 0.1, **fields})


def test_cosine_warms_up_then_decays_to_the_floor_at_the_last_step() -> None:
    cfg = optim(schedule="cosine", warmup_steps=10)
    assert lr_at(0, cfg, 110) == pytest.approx(0.1)  # lr / warmup_steps
    assert lr_at(9, cfg, 110) == pytest.approx(1.0)  # end of warmup: the peak
    assert lr_at(10, cfg, 110) == pytest.approx(1.0)
    assert lr_at(10 + 99 // 2, cfg, 110) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 49 / 99)))
    assert lr_at(109, cfg, 110) == pytest.approx(0.1)
    assert lr_at(500, cfg, 110) == pytest.approx(0.1)  # past the end: stays at the floor


def test_wsd_is_stable_then_decays_over_the_last_fraction_or_steps() -> None:
    cfg = optim(schedule="wsd", warmup_steps=5, decay_fraction=0.2)
    assert [lr_at(s, cfg, 100) for s in (0, 4, 5, 79)] == pytest.approx([0.2, 1.0, 1.0, 1.0])
    assert lr_at(80, cfg, 100) == pytest.approx(1.0 - 0.9 / 20)  # first decay step
    assert lr_at(89, cfg, 100) == pytest.approx(1.0 - 0.9 * 10 / 20)
    assert lr_at(99, cfg, 100) == pytest.approx(0.1)
    by_steps = optim(schedule="wsd", warmup_steps=5, decay_steps=10)
    assert lr_at(89, by_steps, 100) == pytest.approx(1.0)
    assert lr_at(90, by_steps, 100) == pytest.approx(1.0 - 0.9 / 10)
    assert lr_at(99, by_steps, 100) == pytest.approx(0.1)
    assert lr_at(99, optim(schedule="wsd", decay_steps=0), 100) == pytest.approx(1.0)  # no decay


@pytest.mark.parametrize(("shape", "half"), [("linear", 0.5), ("cosine", 0.5), ("sqrt", math.sqrt(0.5))])
def test_decay_shapes(shape: str, half: float) -> None:
    assert decay_progress(0.0, shape) == 0.0 and decay_progress(1.0, shape) == 1.0
    assert decay_progress(0.5, shape) == pytest.approx(half)
    cfg = optim(schedule="wsd", decay_steps=10, decay_shape=shape, min_lr_ratio=0.0)
    assert lr_at(94, cfg, 100) == pytest.approx(1.0 - half)  # 5 of 10 decay steps done
    assert lr_at(99, cfg, 100) == pytest.approx(0.0)


def test_constant_with_and_without_cooldown() -> None:
    plain = optim(schedule="constant", warmup_steps=4)
    assert [lr_at(s, plain, 50) for s in (0, 3, 4, 49, 1000)] == pytest.approx([0.25, 1.0, 1.0, 1.0, 1.0])
    cooled = optim(schedule="constant", warmup_steps=4, decay_steps=10)
    assert lr_at(39, cooled, 50) == pytest.approx(1.0)
    assert lr_at(40, cooled, 50) == pytest.approx(1.0 - 0.9 / 10)
    assert lr_at(49, cooled, 50) == pytest.approx(0.1)


@pytest.mark.parametrize("shape", ["linear", "sqrt"])
def test_a_cooldown_branched_from_a_stable_checkpoint_equals_the_wsd_run_it_replaces(shape: str) -> None:
    # A WSD run of k + D steps decays over its last D; the branch starts at stable step k
    # as a new run of D steps (no warmup, decay_fraction 1): the same lr, step for step.
    k, d = 70, 30
    main = optim(schedule="wsd", warmup_steps=10, decay_steps=d, decay_shape=shape)
    stable = optim(schedule="constant", warmup_steps=10)
    branch = optim(schedule="wsd", warmup_steps=0, decay_fraction=1.0, decay_shape=shape)
    assert [lr_at(s, stable, 1000) for s in range(k)] == [lr_at(s, main, k + d) for s in range(k)]
    assert [lr_at(j, branch, d) for j in range(d)] == pytest.approx(
        [lr_at(k + j, main, k + d) for j in range(d)]
    )
    assert lr_at(0, branch, d) < 1.0 and lr_at(d - 1, branch, d) == pytest.approx(0.1)


def test_rewarm_and_redecay_when_continuing_a_finished_run() -> None:
    # the continued run is its own run: the lr climbs again from lr / warmup and decays again
    first = optim(schedule="cosine", warmup_steps=10)
    assert lr_at(99, first, 100) == pytest.approx(0.1)  # finished: at the floor
    second = optim(schedule="cosine", warmup_steps=10, lr=0.5)
    values = [lr_at(s, second, 50) for s in range(50)]
    assert values[0] == pytest.approx(0.05) and values[9] == pytest.approx(0.5)
    assert values[-1] == pytest.approx(0.05) and values == sorted(values[:10]) + values[10:]


def test_describe_schedule() -> None:
    assert (
        describe_schedule(optim(schedule="cosine", warmup_steps=10), 100)
        == "warmup 0-9, cosine 1e+00 -> 1e-01 at 99"
    )
    text = describe_schedule(optim(schedule="wsd", warmup_steps=10, decay_steps=20, decay_shape="sqrt"), 100)
    assert text == "warmup 0-9, constant 1e+00 to 79, sqrt decay 80-99 -> 1e-01"
    assert describe_schedule(optim(schedule="constant"), 100) == "constant 1e+00 to 99"
