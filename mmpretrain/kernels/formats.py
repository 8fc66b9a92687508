"""Number formats of the low-precision kinds, emulated exactly in float32.

Every function here is pure numerics: it returns quantized values plus the scales that
map them back (``x ~= q * scale`` everywhere), and dequantizes. The kinds (``fp8``,
``int8``, ``mxfp4``, ``nvfp4``) build their matmuls from them; tests compare them with
independent references (for fp8: every bf16 value).

- fp8: ``e4m3`` (OCP "fn" variant: max 448, no inf, NaN kept) and ``e5m2`` (max 57344).
  Values are clamped to the format's max before the cast, so overflow and +-inf saturate to
  +-max (torch's cast to e5m2 overflows to inf, and older torch versions turn e4m3
  overflow into NaN); rounding is to nearest, ties to even mantissa; NaN stays NaN.
  Scaling is dynamic: tensor-wise (one scale) or axis-wise (one scale per slice, amax
  taken over ``dim``, e.g. ``dim=-1`` = one scale per row), ``scale = amax / max``.
- E2M1 (the 4-bit element of mxfp4/nvfp4): values {0, 0.5, 1, 1.5, 2, 3, 4, 6} and their
  negatives; round to nearest, ties to even mantissa, saturating at 6.
- mxfp4 (OCP Microscaling spec v1.0): blocks of 32 along the last dim, shared E8M0 scale
  ``2^(floor(log2(amax)) - 2)`` (2 = emax of E2M1), clamped to E8M0's [-127, 127]; elements
  ``x / scale`` rounded to E2M1 (amax / scale lies in [4, 8), so the top saturates to 6).
- nvfp4: blocks of 16 along the last dim; a per-tensor fp32 scale
  ``tensor_scale = amax(x) / (448 * 6)`` and per-block E4M3 scales
  ``block_scale = e4m3(amax_block / 6 / tensor_scale)``; elements
  ``x / (block_scale * tensor_scale)`` (fp32) rounded to E2M1; a block whose scale is 0
  quantizes to 0. Dequantized: ``q * block_scale * tensor_scale``.
- int8 per-block (Jetfire): 2-D tiles (default 32 x 32) of a matrix, ``scale = absmax/127``
  per tile, ``q = round(x / scale)`` (nearest, ties to even) in [-127, 127].

Stochastic rounding (for gradients) rounds to one of the two neighbouring grid values with
probabilities that make the result unbiased; it takes a ``torch.Generator`` so runs are
reproducible (the kinds seed it from a counter kept in their state, so resume is exact).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Fp8Format = Literal["e4m3", "e5m2"]

FP8_MAX: dict[str, float] = {"e4m3": 448.0, "e5m2": 57344.0}
FP8_DTYPE: dict[str, torch.dtype] = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
E2M1_MAX = 6.0
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
INT8_MAX = 127.0
MX_BLOCK = 32
NV_BLOCK = 16
E8M0_EXP_RANGE = (-127, 127)
_TINY = 1e-30  # amax floor: an all-zero tensor gets a tiny scale instead of 0/0


# ---------------------------------------------------------------------------- rounding


def _uniform_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)


def round_to_grid(
    x: Tensor,
    *,
    man_bits: int,
    min_exp: int,
    max_value: float,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Round ``x`` (float32) to a binary float grid with ``man_bits`` mantissa bits.

    ``min_exp`` is the exponent of the smallest normal binade (subnormals share its step);
    the result saturates at ``+-max_value``. Nearest rounding breaks ties to the even
    mantissa (``torch.round`` is half-to-even and ``|x| / step`` counts mantissa steps);
    stochastic rounding picks the upper neighbour with probability equal to the fraction.
    """
    x = x.float()
    mag = x.abs()
    # floor(log2(|x|)) exactly, from the binary exponent (|x| = m * 2^e, m in [0.5, 1)).
    exponent = torch.frexp(mag).exponent - 1
    step = torch.exp2((exponent.clamp(min=min_exp) - man_bits).float())  # exact for integers
    scaled = mag / step  # exact: step is a power of two
    steps = torch.floor(scaled + _uniform_like(scaled, generator)) if stochastic else torch.round(scaled)
    out = (steps * step).clamp(max=max_value)
    return torch.where(torch.isnan(x), x, out.copysign(x))


def round_e2m1(x: Tensor, *, stochastic: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """Round to the E2M1 grid {0, 0.5, 1, 1.5, 2, 3, 4, 6} (signed), saturating at 6."""
    return round_to_grid(
        x, man_bits=1, min_exp=0, max_value=E2M1_MAX, stochastic=stochastic, generator=generator
    )


def round_int(
    x: Tensor, limit: float, *, stochastic: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """Round to integers in [-limit, limit] (nearest ties-to-even, or stochastic)."""
    x = x.float()
    rounded = torch.floor(x + _uniform_like(x, generator)) if stochastic else torch.round(x)
    return rounded.clamp(-limit, limit)


# ---------------------------------------------------------------------------- fp8


def cast_to_fp8(x: Tensor, fmt: Fp8Format) -> Tensor:
    """Saturating cast to a torch float8 dtype: clamp to +-max, then round to nearest even."""
    limit = FP8_MAX[fmt]
    return x.float().clamp(-limit, limit).to(FP8_DTYPE[fmt])


def round_to_fp8(x: Tensor, fmt: Fp8Format) -> Tensor:
    """``x`` rounded to the fp8 format (saturating), returned as float32."""
    return cast_to_fp8(x, fmt).float()


def fp8_scale(x: Tensor, fmt: Fp8Format, dim: int | None = None) -> Tensor:
    """Dynamic dequantization scale ``amax / max`` (float32): one for the tensor, or one per
    slice with the amax taken over ``dim`` (kept as a size-1 dim so it broadcasts)."""
    mag = x.detach().float().abs()
    amax = mag.amax() if dim is None else mag.amax(dim=dim, keepdim=True)
    return amax.clamp(min=_TINY) / FP8_MAX[fmt]


def quantize_fp8(
    x: Tensor,
    fmt: Fp8Format,
    dim: int | None = None,
    *,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Scale dynamically and cast: returns (float8 tensor, float32 scale), ``x ~= q * scale``."""
    scale = fp8_scale(x, fmt, dim)
    scaled = x.float() / scale
    if stochastic:
        man_bits, min_exp = (3, -6) if fmt == "e4m3" else (2, -14)
        scaled = round_to_grid(
            scaled,
            man_bits=man_bits,
            min_exp=min_exp,
            max_value=FP8_MAX[fmt],
            stochastic=True,
            generator=generator,
        )
    return cast_to_fp8(scaled, fmt), scale


def fake_quantize_fp8(
    x: Tensor,
    fmt: Fp8Format,
    dim: int | None = None,
    *,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Quantize to fp8 with dynamic scaling and dequantize (float32)."""
    q, scale = quantize_fp8(x, fmt, dim, stochastic=stochastic, generator=generator)
    return q.float() * scale


# ---------------------------------------------------------------------------- blocks


def _to_blocks(x: Tensor, block: int) -> tuple[Tensor, int]:
    """Float32 view [..., n_blocks, block] of the last dim, zero-padded to a multiple."""
    x = x.float()
    width = x.shape[-1]
    pad = (-width) % block
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], -1, block), width


def _from_blocks(blocks: Tensor, width: int) -> Tensor:
    return blocks.reshape(*blocks.shape[:-2], -1)[..., :width]


def mx_scale_exponent(amax: Tensor) -> Tensor:
    """E8M0 shared exponent ``floor(log2(amax)) - 2`` (int32), clamped to [-127, 127].

    An all-zero block gets -127 (any scale represents it)."""
    exponent = torch.frexp(amax.float()).exponent - 1 - 2
    exponent = torch.where(amax > 0, exponent, torch.full_like(exponent, E8M0_EXP_RANGE[0]))
    return exponent.clamp(*E8M0_EXP_RANGE)


def quantize_mxfp4(
    x: Tensor,
    *,
    block: int = MX_BLOCK,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """MXFP4 along the last dim: returns (E2M1 values [..., n], scales [..., n / block]).

    Values are float32 numbers on the E2M1 grid, scales float32 powers of two."""
    blocks, width = _to_blocks(x, block)
    scale = torch.exp2(mx_scale_exponent(blocks.abs().amax(dim=-1, keepdim=True)).float())
    q = round_e2m1(blocks / scale, stochastic=stochastic, generator=generator)
    return _from_blocks(q, width), scale.squeeze(-1)


def dequantize_blocks(q: Tensor, scale: Tensor, block: int) -> Tensor:
    """``q * scale`` with one scale per ``block`` elements of the last dim."""
    blocks, width = _to_blocks(q, block)
    return _from_blocks(blocks * scale.unsqueeze(-1), width)


def fake_quantize_mxfp4(
    x: Tensor, *, block: int = MX_BLOCK, stochastic: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """MXFP4 round trip (float32)."""
    q, scale = quantize_mxfp4(x, block=block, stochastic=stochastic, generator=generator)
    return dequantize_blocks(q, scale, block)


def nvfp4_tensor_scale(x: Tensor) -> Tensor:
    """Per-tensor fp32 scale ``amax / (448 * 6)`` (0-dim)."""
    return x.detach().float().abs().amax().clamp(min=_TINY) / (FP8_MAX["e4m3"] * E2M1_MAX)


def quantize_nvfp4(
    x: Tensor,
    *,
    block: int = NV_BLOCK,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
    tensor_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """NVFP4 along the last dim: (E2M1 values, E4M3 block scales as float32, tensor scale)."""
    if tensor_scale is None:
        tensor_scale = nvfp4_tensor_scale(x)
    blocks, width = _to_blocks(x, block)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    block_scale = round_to_fp8(amax / E2M1_MAX / tensor_scale, "e4m3")
    denominator = block_scale * tensor_scale
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    q = round_e2m1(blocks / safe, stochastic=stochastic, generator=generator)
    q = torch.where(denominator > 0, q, torch.zeros_like(q))
    return _from_blocks(q, width), block_scale.squeeze(-1), tensor_scale


def dequantize_nvfp4(q: Tensor, block_scale: Tensor, tensor_scale: Tensor, block: int = NV_BLOCK) -> Tensor:
    """``q * (block_scale * tensor_scale)``, all in float32."""
    return dequantize_blocks(q, block_scale * tensor_scale, block)


def fake_quantize_nvfp4(
    x: Tensor, *, block: int = NV_BLOCK, stochastic: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """NVFP4 round trip (float32)."""
    q, block_scale, tensor_scale = quantize_nvfp4(x, block=block, stochastic=stochastic, generator=generator)
    return dequantize_nvfp4(q, block_scale, tensor_scale, block)


# ---------------------------------------------------------------------------- int8 tiles


def _to_tiles(x: Tensor, tile: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
    """Float32 view [R/tr, tr, C/tc, tc] of a matrix, zero-padded to whole tiles."""
    if x.dim() != 2:
        raise ValueError(f"int8 block quantization takes a matrix, got shape {tuple(x.shape)}")
    rows, cols = x.shape
    tr, tc = tile
    padded = torch.nn.functional.pad(x.float(), (0, (-cols) % tc, 0, (-rows) % tr))
    return padded.reshape(padded.shape[0] // tr, tr, padded.shape[1] // tc, tc), (rows, cols)


def _from_tiles(tiles: Tensor, shape: tuple[int, int]) -> Tensor:
    n_r, tr, n_c, tc = tiles.shape
    return tiles.reshape(n_r * tr, n_c * tc)[: shape[0], : shape[1]]


def quantize_int8_blocks(
    x: Tensor,
    tile: tuple[int, int] = (32, 32),
    *,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-tile int8 (Jetfire): returns (int8 matrix, float32 scales [R/tr, C/tc]), absmax/127."""
    tiles, shape = _to_tiles(x, tile)
    scale = tiles.abs().amax(dim=(1, 3), keepdim=True).clamp(min=_TINY) / INT8_MAX
    q = round_int(tiles / scale, INT8_MAX, stochastic=stochastic, generator=generator)
    return _from_tiles(q, shape).to(torch.int8), scale[:, 0, :, 0]


def dequantize_int8_blocks(q: Tensor, scale: Tensor, tile: tuple[int, int] = (32, 32)) -> Tensor:
    """``q * scale`` per tile (float32)."""
    tiles, shape = _to_tiles(q, tile)
    return _from_tiles(tiles * scale[:, None, :, None], shape)


def fake_quantize_int8_blocks(
    x: Tensor,
    tile: tuple[int, int] = (32, 32),
    *,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-tile int8 round trip of a matrix (float32)."""
    q, scale = quantize_int8_blocks(x, tile, stochastic=stochastic, generator=generator)
    return dequantize_int8_blocks(q, scale, tile)
