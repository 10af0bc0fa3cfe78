"""Round-to-nearest weight quantization: pure tensor math, no modules.

All functions take a 2-D weight in ``[out, in]`` layout (rows are output channels; groups run along the
input dimension, the dimension a matmul reduces over) and return new tensors.

Conventions (written down because quantizers differ):

- **symmetric**: ``q ∈ [-(2^(b-1)-1), 2^(b-1)-1]``, ``scale = absmax / (2^(b-1)-1)``, ``ŵ = q·scale``.
  The most negative code is unused, so zero is exact and nothing is clipped: ``|w - ŵ| ≤ scale/2``.
- **asymmetric**: integer zero point (GPTQ/AWQ style). ``lo = min(w, 0)``, ``hi = max(w, 0)``,
  ``scale = (hi - lo) / (2^b - 1)``, ``z = round(-lo/scale)``, ``q = clamp(round(w/scale) + z, 0, 2^b-1)``,
  ``ŵ = (q - z)·scale``; again ``|w - ŵ| ≤ scale/2``.
- Scales are stored in float16 (as real formats do), rounded up, and the dequantization uses the stored
  value.
- ``group_size=None`` means one group per row (per-channel); ``per_tensor=True`` one group for the tensor.
  A row whose length is not a multiple of the group size ends with a shorter group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch

SCALE_DTYPE = torch.float16
#: Largest group size a scheme may name. Real formats use 32-128; a longer group than a row is simply one group
#: per row (the same numbers as per-channel), so larger values only catch typos such as ``w4g1280000``.
MAX_GROUP_SIZE = 8192
# The smallest positive float16 (subnormal, 2^-24). Clamping at the smallest *normal* one (6.1e-5) would give a
# group with absmax below 6.1e-5 * qmax (7.8e-3 at 8 bits) a coarser grid than its bits allow.
_FP16_TINY = 2.0**-24


@dataclass(frozen=True)
class QTensor:
    """Integer codes with their scales (and zero points): the exact content of a quantized tensor."""

    codes: torch.Tensor  # int16 [rows, n_groups, group]; padding positions hold 0 / z
    scale: torch.Tensor  # float16 [rows, n_groups, 1]
    zero: torch.Tensor | None  # int16 [rows, n_groups, 1] for asymmetric, else None
    shape: tuple[int, int]  # original [out, in]
    bits: int

    @property
    def symmetric(self) -> bool:
        return self.zero is None


def _grouped(w: torch.Tensor, group_size: int | None, per_tensor: bool) -> torch.Tensor:
    """View ``w [out, in]`` as ``[rows, n_groups, g]`` (zero-padded at the end of each row)."""
    out_f, in_f = w.shape
    if per_tensor:
        return w.reshape(1, 1, out_f * in_f)
    g = in_f if group_size is None else min(int(group_size), in_f)  # a group longer than the row: one per row
    n_groups = -(-in_f // g)
    pad = n_groups * g - in_f
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    return w.reshape(out_f, n_groups, g)


def _store_scale(scale: torch.Tensor) -> torch.Tensor:
    """The scale as stored: float16, rounded *up* so the grid still spans the group's range.

    Rounding to nearest could shrink the scale by up to 2^-11 and clip the extreme values by up to
    (2^b - 1) * 2^-11 steps; rounding up keeps the error bound of half a step exact. Zero groups get scale 1.
    """
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).clamp(min=_FP16_TINY)
    s16 = scale.to(SCALE_DTYPE)
    low = s16.float() < scale
    # Positive float16 values order like their bit patterns: +1 on the bits is the next float16 up.
    return torch.where(low, (s16.view(torch.int16) + 1).view(SCALE_DTYPE), s16)


def _params(x: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale (float16) and zero point (or None) of each group of ``x [..., g]``."""
    if symmetric:
        return _store_scale(x.abs().amax(dim=-1, keepdim=True) / (2 ** (bits - 1) - 1)), None
    levels = 2**bits - 1
    lo = x.amin(dim=-1, keepdim=True).clamp(max=0)
    hi = x.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = _store_scale((hi - lo) / levels)
    zero = torch.round(-lo / scale.float()).clamp_(0, levels)
    return scale, zero


def _codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int) -> torch.Tensor:
    s = scale.float()
    if zero is None:
        qmax = 2 ** (bits - 1) - 1
        return torch.round(x / s).clamp_(-qmax, qmax)
    return (torch.round(x / s) + zero).clamp_(0, 2**bits - 1)


def _check(w: torch.Tensor, bits: int, group_size: int | None = None) -> None:
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    if group_size is not None and not 1 <= group_size <= MAX_GROUP_SIZE:
        raise ValueError(f"group size must be in 1..{MAX_GROUP_SIZE}, got {group_size}")


def quantize(
    w: torch.Tensor, bits: int, *, group_size: int | None = None, per_tensor: bool = False, symmetric: bool = True
) -> QTensor:
    _check(w, bits, group_size)
    x = _grouped(w.float(), group_size, per_tensor)  # [rows, n_groups, g]
    scale, zero = _params(x, bits, symmetric)
    codes = _codes(x, scale, zero, bits)
    return QTensor(
        codes=codes.to(torch.int16),
        scale=scale,
        zero=None if zero is None else zero.to(torch.int16),
        shape=cast("tuple[int, int]", tuple(w.shape)),  # 2-D: checked by _check
        bits=bits,
    )


def dequantize(q: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    codes = q.codes.float()
    if q.zero is not None:
        codes = codes - q.zero.float()
    out_f, in_f = q.shape
    return (codes * q.scale.float()).reshape(out_f, -1)[:, :in_f].to(dtype)


def fake_quantize(
    w: torch.Tensor,
    bits: int,
    *,
    group_size: int | None = None,
    per_tensor: bool = False,
    symmetric: bool = True,
    chunk_elems: int = 1 << 22,
) -> torch.Tensor:
    """``dequantize(quantize(w))`` in ``w``'s dtype and device, computed in row chunks.

    Chunking bounds the temporaries (a 262k x 640 embedding would otherwise need several GB); the result
    equals the unchunked computation exactly because groups never span rows (per-tensor parameters are
    computed over the whole tensor first).
    """
    _check(w, bits, group_size)
    out = torch.empty_like(w)
    rows = max(1, chunk_elems // max(1, w.shape[1]))
    fixed: tuple[torch.Tensor, torch.Tensor | None] | None = None
    if per_tensor:
        flat = w.float().reshape(1, 1, -1)
        fixed = _params(flat, bits, symmetric)
    for r0 in range(0, w.shape[0], rows):
        part = w[r0 : r0 + rows].float()
        if per_tensor:
            assert fixed is not None  # set above when per_tensor
            scale, zero = fixed
            x = part.reshape(1, 1, -1)
        else:
            x = _grouped(part, group_size, False)
            scale, zero = _params(x, bits, symmetric)
        codes = _codes(x, scale, zero, bits)
        if zero is not None:
            codes -= zero
        out[r0 : r0 + rows] = (codes * scale.float()).reshape(part.shape[0], -1)[:, : w.shape[1]].to(w.dtype)
    return out


def n_groups(shape: tuple[int, int], group_size: int | None, per_tensor: bool) -> int:
    out_f, in_f = shape
    if per_tensor:
        return 1
    g = in_f if group_size is None else min(group_size, in_f)
    return out_f * (-(-in_f // g))


def storage_bits(shape: tuple[int, int], bits: int, group_size: int | None, per_tensor: bool, symmetric: bool) -> float:
    """Bits of a ``[out, in]`` tensor stored as B-bit codes with a float16 scale per group and, when asymmetric, a
    B-bit zero point per group (the RTN formats, and GPTQ's and AWQ's, which share them)."""
    groups = n_groups(shape, group_size, per_tensor)
    return float(shape[0] * shape[1] * bits + groups * (16 + (0 if symmetric else bits)))
