"""Number formats against independent references (mmpretrain.kernels.reference).

The references decode every bit pattern of a format to float64, sort the finite values and
pick the nearest one, breaking ties towards the even mantissa (lowest mantissa bit 0), and
write the block formats' specifications out loop by loop. They share no code with
mmpretrain.kernels.formats.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmpretrain.kernels import formats
from mmpretrain.kernels.reference import (
    E2M1_TABLE,
    all_bf16,
    block_mismatches,
    fp8_mismatches,
    fp8_table,
    nearest_even,
    reference_mxfp4,
    reference_nvfp4,
    same,
    spread_matrix,
)

# ---------------------------------------------------------------------------- fp8


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_fp8_matches_reference_on_every_bf16_value(fmt: str) -> None:
    tensor, exact = all_bf16()
    with np.errstate(invalid="ignore"):
        assert np.array_equal(tensor.float().numpy().astype(np.float64), exact, equal_nan=True)
    ours = formats.round_to_fp8(tensor, fmt).double().numpy()
    reference = nearest_even(exact, fp8_table(fmt))
    mismatches = np.flatnonzero(~same(ours, reference))
    assert mismatches.size == 0, [(exact[i], ours[i], reference[i]) for i in mismatches[:5]]
    assert fp8_mismatches(fmt) == 0  # what bench_kernels.py reports


def test_fp8_tables_have_the_format_limits() -> None:
    e4m3, _ = fp8_table("e4m3")
    e5m2, _ = fp8_table("e5m2")
    assert e4m3[-1] == formats.FP8_MAX["e4m3"] == 448.0 and e4m3[1] == 2.0**-9
    assert e5m2[-1] == formats.FP8_MAX["e5m2"] == 57344.0 and e5m2[1] == 2.0**-16
    assert len(e4m3) == 127 and len(e5m2) == 124  # 0..max without the sign


def test_fp8_saturates_and_keeps_nan() -> None:
    x = torch.tensor([1e6, -1e6, math.inf, -math.inf, math.nan, 464.0, 465.0, -0.0])
    e4m3 = formats.round_to_fp8(x, "e4m3")
    assert e4m3[:4].tolist() == [448.0, -448.0, 448.0, -448.0]
    assert math.isnan(e4m3[4]) and e4m3[5] == 448.0 and e4m3[6] == 448.0
    assert e4m3[7] == 0 and math.copysign(1, e4m3[7]) == -1
    e5m2 = formats.round_to_fp8(torch.tensor([1e6, 61440.0, -math.inf]), "e5m2")
    assert e5m2.tolist() == [57344.0, 57344.0, -57344.0]


@pytest.mark.parametrize("dim", [None, -1, 0])
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_fp8_dynamic_scaling(fmt: str, dim: int | None) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 64) * torch.logspace(-3, 3, 8)[:, None]
    q, scale = formats.quantize_fp8(x, fmt, dim)
    assert q.dtype == formats.FP8_DTYPE[fmt] and scale.dtype == torch.float32
    expected_shape = () if dim is None else tuple(1 if d == dim % 2 else n for d, n in enumerate(x.shape))
    assert tuple(scale.shape) == expected_shape
    # The amax of every scaled slice lands exactly on the format max.
    amax = q.float().abs().amax() if dim is None else q.float().abs().amax(dim=dim)
    assert torch.all(amax == formats.FP8_MAX[fmt])
    rel = 2.0 ** -(4 if fmt == "e4m3" else 3)  # half an ulp of the mantissa, relative
    dq = q.float() * scale
    big = x.abs() > (scale * 2.0 ** (-6 if fmt == "e4m3" else -14))  # normal range
    assert torch.all((dq - x).abs()[big] <= rel * x.abs()[big] * 1.0001)
    assert torch.equal(formats.fake_quantize_fp8(x, fmt, dim), dq)


def test_row_wise_scaling_is_more_precise_for_rows_of_different_size() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 64) * torch.logspace(-6, 2, 16)[:, None]
    row = (formats.fake_quantize_fp8(x, "e4m3", -1) - x).norm(dim=1) / x.norm(dim=1)
    tensor = (formats.fake_quantize_fp8(x, "e4m3") - x).norm(dim=1) / x.norm(dim=1)
    assert row.max() < 0.05 and tensor.max() > 0.5  # tensor-wise flushes the small rows


# ---------------------------------------------------------------------------- E2M1, mxfp4, nvfp4


def test_e2m1_hand_checked() -> None:
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.5, 100.0, -0.3, -2.6, 0.2, 7.0])
    expected = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, -0.5, -3.0, 0.0, 6.0]
    assert formats.round_e2m1(x).tolist() == expected


def test_e2m1_matches_reference_on_a_dense_sweep() -> None:
    x = torch.linspace(-8, 8, 4097)  # step 1/256: hits every tie
    ours = formats.round_e2m1(x).double().numpy()
    assert np.array_equal(ours, nearest_even(x.double().numpy(), E2M1_TABLE))


def test_mxfp4_matches_reference_formula() -> None:
    x = spread_matrix(24, 96, seed=1)
    ours = formats.fake_quantize_mxfp4(x)
    assert np.array_equal(ours.double().numpy(), reference_mxfp4(x.numpy()))


def test_mxfp4_hand_checked() -> None:
    x = torch.zeros(1, 32)
    x[0, :6] = torch.tensor([6.0, 0.25, 0.75, 5.0, -1.25, 2.5])
    assert formats.fake_quantize_mxfp4(x)[0, :6].tolist() == [6.0, 0.0, 1.0, 4.0, -1.0, 2.0]
    q, scale = formats.quantize_mxfp4(x)
    assert scale.tolist() == [[1.0]] and q.shape == x.shape  # floor(log2 6) - 2 = 0
    x[0, 0] = 8.0  # floor(log2 8) - 2 = 1: scale 2, elements halved
    q, scale = formats.quantize_mxfp4(x)
    assert scale.tolist() == [[2.0]] and q[0, :6].tolist() == [4.0, 0.0, 0.5, 2.0, -0.5, 1.0]
    x[0, 0] = 7.9  # scale 1: 7.9 saturates to 6
    assert formats.fake_quantize_mxfp4(x)[0, 0] == 6.0
    # A last dim that is not a multiple of 32 is padded with zeros: same result per block.
    y = torch.randn(3, 40)
    padded = torch.nn.functional.pad(y, (0, 24))
    assert torch.equal(formats.fake_quantize_mxfp4(y), formats.fake_quantize_mxfp4(padded)[:, :40])
    assert formats.quantize_mxfp4(y)[1].shape == (3, 2)


def test_nvfp4_matches_reference_formula() -> None:
    torch.manual_seed(0)
    for x in (spread_matrix(8, 64, seed=2) * 1e-3, torch.randn(16, 48) * 3, torch.randn(4, 16) * 1e4):
        ours = formats.fake_quantize_nvfp4(x)
        assert np.array_equal(ours.double().numpy(), reference_nvfp4(x.numpy()))
    assert block_mismatches("nvfp4", 16, 64)[0] == 0 and block_mismatches("mxfp4", 16, 64)[0] == 0


def test_the_reference_sees_a_wrong_rounding() -> None:
    """The comparison has teeth: rounding ties away from zero, or not saturating, is caught."""
    tensor, exact = all_bf16()
    reference = nearest_even(exact, fp8_table("e4m3"))
    with np.errstate(invalid="ignore"):
        no_clamp = tensor.float().to(torch.float8_e5m2).double().numpy()
    assert (~same(no_clamp, nearest_even(exact, fp8_table("e5m2")))).sum() > 1000  # overflow -> inf
    ties_away = np.copysign(np.floor(np.abs(exact) * 2**9 + 0.5) / 2**9, exact)  # subnormal grid
    small = np.abs(exact) < 2.0**-6
    assert (~same(ties_away[small], reference[small])).sum() > 0


def test_nvfp4_hand_checked() -> None:
    x = torch.zeros(1, 32)
    x[0, :4] = torch.tensor([2688.0, 1.25, -3.5, 5.0])  # amax 2688 = 448 * 6: tensor scale 1
    x[0, 16:18] = torch.tensor([6.0, 0.75])  # block 2: amax 6 -> block scale 1
    q, block_scale, tensor_scale = formats.quantize_nvfp4(x)
    assert tensor_scale.item() == 1.0
    assert block_scale.tolist() == [[448.0, 1.0]]
    assert q[0, :4].tolist() == [6.0, 0.0, -0.0, 0.0]  # 1.25/448 etc. round to 0
    assert q[0, 16:18].tolist() == [6.0, 1.0]
    out = formats.dequantize_nvfp4(q, block_scale, tensor_scale)
    assert out[0, 0] == 2688.0 and out[0, 17] == 1.0


# ---------------------------------------------------------------------------- int8 tiles


@pytest.mark.parametrize("shape", [(64, 96), (70, 45), (1, 5)])
def test_int8_block_round_trip_error_is_at_most_half_a_step(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    x = torch.randn(*shape) * torch.logspace(-2, 2, shape[0])[:, None]
    q, scale = formats.quantize_int8_blocks(x, (32, 32))
    assert q.dtype == torch.int8 and q.shape == x.shape
    assert scale.shape == (math.ceil(shape[0] / 32), math.ceil(shape[1] / 32))
    assert q.abs().max() <= 127
    step = scale.repeat_interleave(32, 0).repeat_interleave(32, 1)[: shape[0], : shape[1]]
    error = (formats.dequantize_int8_blocks(q, scale) - x).abs()
    assert torch.all(error <= step / 2 * (1 + 1e-6))
    # The absmax of every tile is represented exactly (it maps to +-127).
    tiles_amax = torch.nn.functional.max_pool2d(x.abs()[None, None], 32, ceil_mode=True)[0, 0]
    assert torch.allclose(scale * 127, tiles_amax)


def test_int8_block_tiles_are_independent() -> None:
    x = torch.ones(64, 64) * 0.01
    x[0, 0] = 100.0  # a spike only coarsens its own tile
    dq = formats.fake_quantize_int8_blocks(x)
    assert torch.allclose(dq[32:, :], x[32:, :]) and torch.allclose(dq[:32, 32:], x[:32, 32:])
    assert torch.all(dq[1:32, 1:32] == 0)


# ---------------------------------------------------------------------------- stochastic rounding


def test_stochastic_rounding_is_unbiased_and_picks_neighbours() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.tensor([0.3, 1.1, 2.2, 3.7, 4.5, -5.9, 0.05, 2.0])
    samples = torch.stack([formats.round_e2m1(x, stochastic=True, generator=generator) for _ in range(4000)])
    grid = torch.tensor(formats.E2M1_VALUES)
    assert torch.isin(samples.abs(), grid).all()
    lower = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, -6.0, 0.0, 2.0])
    upper = torch.tensor([0.5, 1.5, 3.0, 4.0, 6.0, -4.0, 0.5, 2.0])
    assert torch.all((samples >= torch.minimum(lower, upper)) & (samples <= torch.maximum(lower, upper)))
    spread = (upper - lower).abs()
    assert torch.all((samples.mean(0) - x).abs() <= 4 * spread / 2 / math.sqrt(4000) + 1e-7)
    assert torch.all(samples[:, -1] == 2.0)  # a representable value never moves


def test_stochastic_block_formats_are_unbiased() -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(2, 64) * 12 - 6
    x[:, 0] = 6.0  # amax 6 in every block: no saturation, so the rounding alone decides
    x[:, 32] = -6.0
    n = 2000
    mx = torch.stack([formats.fake_quantize_mxfp4(x, stochastic=True, generator=generator) for _ in range(n)])
    assert (mx.mean(0) - x).abs().max() < 4 * 1.0 / math.sqrt(n)  # step <= 2, std <= 1
    assert (formats.fake_quantize_mxfp4(x) - x).abs().max() > 0.2  # nearest rounding is not exact here
    t = torch.randn(40, 40)
    i8 = torch.stack(
        [formats.fake_quantize_int8_blocks(t, stochastic=True, generator=generator) for _ in range(n)]
    )
    step = formats.quantize_int8_blocks(t)[1].max()
    assert (i8.mean(0) - t).abs().max() < 4 * step / 2 / math.sqrt(n)


def test_stochastic_rounding_is_reproducible_from_the_seed() -> None:
    x = torch.randn(4, 64)
    a = formats.fake_quantize_nvfp4(x, stochastic=True, generator=torch.Generator().manual_seed(7))
    b = formats.fake_quantize_nvfp4(x, stochastic=True, generator=torch.Generator().manual_seed(7))
    c = formats.fake_quantize_nvfp4(x, stochastic=True, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
