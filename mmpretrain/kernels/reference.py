"""Independent reference numerics for the low-precision formats (slow, for tests and benchmarks).

Nothing here shares code with :mod:`mmpretrain.kernels.formats`: every format is decoded
from its bit patterns into float64 in NumPy, and rounding picks the nearest table value
directly, ties to the even mantissa (lowest mantissa bit 0), saturating at the format max
(so +-inf becomes +-max), NaN staying NaN. Block formats follow their specifications
written out loop by loop:

- mxfp4 (OCP MX v1.0): shared exponent ``X = floor(log2(amax)) - 2`` (2 = emax of E2M1)
  clamped to [-127, 127], elements ``e2m1(v / 2^X)``.
- nvfp4: per-tensor ``s = fp32(amax / 2688)``, per-block ``b = e4m3(fp32(amax_b / 6) / s)``,
  elements ``e2m1(fp32(v / fp32(b * s)))``, dequantized as ``fp32(q * fp32(b * s))``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

Table = tuple[np.ndarray, np.ndarray]  # ascending non-negative finite values, mantissa parity

E2M1_TABLE: Table = (np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]), np.array([0, 1, 0, 1, 0, 1, 0, 1]))


def fp8_table(fmt: str) -> Table:
    """Non-negative finite values of ``e4m3`` (OCP "fn": no inf, one NaN) or ``e5m2``."""
    exp_bits, man_bits, bias = (4, 3, 7) if fmt == "e4m3" else (5, 2, 15)
    values, parity = [], []
    for e in range(2**exp_bits):
        for m in range(2**man_bits):
            if fmt == "e4m3" and e == 15 and m == 7:
                continue  # e4m3fn: the only NaN; no infinities
            if fmt == "e5m2" and e == 31:
                continue  # inf and NaN
            if e == 0:
                value = m / 2**man_bits * 2.0 ** (1 - bias)
            else:
                value = (1 + m / 2**man_bits) * 2.0 ** (e - bias)
            values.append(value)
            parity.append(m & 1)
    order = np.argsort(values)
    return np.asarray(values)[order], np.asarray(parity)[order]


def nearest_even(x: np.ndarray, table: Table) -> np.ndarray:
    """Round float64 values to the table's grid: saturating, ties to the even mantissa, NaN kept."""
    values, parity = table
    x = np.asarray(x, dtype=np.float64)
    nan = np.isnan(x)
    mag = np.where(nan, 0.0, np.minimum(np.abs(x), values[-1]))
    hi_idx = np.minimum(np.searchsorted(values, mag, side="left"), len(values) - 1)
    lo_idx = np.where(values[hi_idx] == mag, hi_idx, np.maximum(hi_idx - 1, 0))
    lo, hi = values[lo_idx], values[hi_idx]
    down, up = mag - lo, hi - mag
    pick_hi = (up < down) | ((up == down) & (parity[hi_idx] == 0) & (hi_idx != lo_idx))
    out = np.copysign(np.where(pick_hi, hi, lo), x)
    return np.where(nan, np.nan, out)


def all_bf16() -> tuple[torch.Tensor, np.ndarray]:
    """Every one of the 65,536 bf16 bit patterns, as a torch bf16 tensor and as float64
    (decoded from the float32 bit pattern ``bits << 16``, not through torch)."""
    bits = np.arange(2**16, dtype=np.uint32)
    as_f32 = (bits << 16).view(np.float32)
    tensor = torch.from_numpy(bits.astype(np.uint16).view(np.int16).copy()).view(torch.bfloat16)
    with np.errstate(invalid="ignore"):  # NaN payloads
        return tensor, as_f32.astype(np.float64)


def same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise equality with NaN == NaN and the sign of zero compared."""
    both_nan = np.isnan(a) & np.isnan(b)
    return both_nan | ((a == b) & (np.signbit(a) == np.signbit(b)))


def reference_mxfp4(x: np.ndarray, block: int = 32) -> np.ndarray:
    """MXFP4 round trip of a matrix, block by block along the last dim (float64 result)."""
    out = np.zeros_like(x, dtype=np.float64)
    for row in range(x.shape[0]):
        for start in range(0, x.shape[1], block):
            values = x[row, start : start + block].astype(np.float64)
            amax = float(np.max(np.abs(values)))
            if amax == 0:
                continue
            _, exponent = math.frexp(amax)  # amax = mantissa * 2^exponent, mantissa in [0.5, 1)
            scale = 2.0 ** min(max(exponent - 1 - 2, -127), 127)
            out[row, start : start + block] = nearest_even(values / scale, E2M1_TABLE) * scale
    return out


def reference_nvfp4(x: np.ndarray, block: int = 16) -> np.ndarray:
    """NVFP4 round trip of a matrix, block by block along the last dim (fp32 arithmetic)."""
    f32 = np.float32
    tensor_scale = f32(np.max(np.abs(x))) / f32(448.0 * 6.0)
    e4m3 = fp8_table("e4m3")
    out = np.zeros_like(x, dtype=np.float64)
    for row in range(x.shape[0]):
        for start in range(0, x.shape[1], block):
            values = x[row, start : start + block].astype(np.float32)
            amax_b = f32(np.max(np.abs(values)))
            block_scale = f32(nearest_even(np.array([f32(amax_b / f32(6.0)) / tensor_scale]), e4m3)[0])
            denominator = f32(block_scale * tensor_scale)
            if denominator == 0:
                continue
            q = nearest_even((values / denominator).astype(np.float64), E2M1_TABLE)
            out[row, start : start + block] = q.astype(np.float32) * denominator
    return out


def spread_matrix(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Gaussian rows at magnitudes 2^-20 .. 2^20, with a partly zero and an all-zero block."""
    generator = torch.Generator().manual_seed(seed)
    magnitudes = torch.exp2(torch.randint(-20, 20, (rows, 1), generator=generator).float())
    x = torch.randn(rows, cols, generator=generator) * magnitudes
    x[0, :8] = 0.0
    x[1, :32] = 0.0
    return x


def fp8_mismatches(fmt: str) -> int:
    """How many of the 65,536 bf16 values ``formats.round_to_fp8`` rounds differently from
    the reference (NaN == NaN, signed zeros compared)."""
    from mmpretrain.kernels.formats import round_to_fp8

    tensor, exact = all_bf16()
    ours = round_to_fp8(tensor, fmt).double().numpy()  # type: ignore[arg-type]
    return int((~same(ours, nearest_even(exact, fp8_table(fmt)))).sum())


def block_mismatches(fmt: str, rows: int = 64, cols: int = 256, seed: int = 0) -> tuple[int, int]:
    """(mismatching elements, elements) of ``formats``' mxfp4/nvfp4 round trip vs the reference
    on :func:`spread_matrix` data (nvfp4 on rows at one magnitude, as one tensor scale needs)."""
    from mmpretrain.kernels.formats import fake_quantize_mxfp4, fake_quantize_nvfp4

    if fmt == "mxfp4":
        x = spread_matrix(rows, cols, seed)
        ours, ref = fake_quantize_mxfp4(x), reference_mxfp4(x.numpy())
    else:
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(rows, cols, generator=generator) * torch.rand(rows, 1, generator=generator) * 10
        ours, ref = fake_quantize_nvfp4(x), reference_nvfp4(x.numpy())
    return int((ours.double().numpy() != ref).sum()), x.numel()
