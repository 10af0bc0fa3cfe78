"""Quantization schemes: a small grammar, the tensor transform, and honest bit accounting.

Grammar (case-insensitive):

====================  =====================================================================
``w4g128``            4-bit round-to-nearest, groups of 128 input elements, symmetric
``w4g128-asym``       the same with an integer zero point per group
``w8-channel``        one scale per output channel (``-asym`` allowed)
``w4-tensor``         one scale for the whole tensor (the original log's quantizer; ``-asym`` allowed)
``gguf:q4_0``         llama.cpp legacy types q4_0, q4_1, q5_0, q5_1, q8_0 via the ``gguf`` package
``fp16``, ``bf16``    cast to 16-bit floating point and back
``none``              identity (the weight is left as it is)
``w4g128+outliers:1%``  any quantizing scheme, keeping the 1 % largest-magnitude weights of each tensor
                      in float16 (scale computed on the rest; ``+outliers-inscale:`` lets them set it)
====================  =====================================================================

Bits are 2-8. Scales are float16 (16 bits per group); an asymmetric zero point costs ``b`` bits per group.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from . import rtn

_CAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
GGUF_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")
_RTN_RE = re.compile(r"^w(\d+)(?:g(\d+)|-(channel|tensor))(-asym|-sym)?$")
SCHEME_HELP = ("use e.g. w4g128, w4g128-asym, w8-channel, w4-tensor, gguf:q4_0 (q4_0 q4_1 q5_0 q5_1 q8_0), "
               "fp16, bf16 or none")


@dataclass(frozen=True)
class Scheme:
    """A weight transform. ``kind``: rtn | gguf | cast | none."""

    kind: str
    bits: int = 32
    group_size: int | None = None  # rtn: None = per-channel
    per_tensor: bool = False
    symmetric: bool = True
    gguf_type: str | None = None
    cast_dtype: str | None = None
    # Element-level protection: this fraction of the largest-magnitude weights of the tensor is kept in
    # float16 as a sparse part. By default the scale is computed on the remaining weights; ``outliers_in_scale``
    # reproduces the original log's flaw (kept outliers still set the scale).
    outliers: float = 0.0
    outliers_in_scale: bool = False

    @property
    def base_name(self) -> str:
        if self.kind == "none":
            return "none"
        if self.kind == "cast":
            return self.cast_dtype
        if self.kind == "gguf":
            return f"gguf:{self.gguf_type}"
        gran = "-tensor" if self.per_tensor else ("-channel" if self.group_size is None else f"g{self.group_size}")
        return f"w{self.bits}{gran}{'' if self.symmetric else '-asym'}"

    @property
    def name(self) -> str:
        if not self.outliers:
            return self.base_name
        return f"{self.base_name}+outliers{'-inscale' if self.outliers_in_scale else ''}:{100 * self.outliers:g}%"

    def __str__(self) -> str:
        return self.name

    @property
    def is_identity(self) -> bool:
        return self.kind == "none"

    def with_outliers(self, fraction: float, in_scale: bool = False) -> Scheme:
        return dataclasses.replace(self, outliers=fraction, outliers_in_scale=in_scale)

    # -- the transform -------------------------------------------------------------------------
    def fake_quantize(self, w2d: torch.Tensor) -> torch.Tensor:
        """Quantize and dequantize a 2-D ``[out, in]`` weight; returns a new tensor of the same dtype."""
        if self.outliers and not self.is_identity:
            return self._with_outliers(w2d)
        return self._fake_quantize(w2d)

    def _with_outliers(self, w2d: torch.Tensor) -> torch.Tensor:
        k = n_outliers(w2d.numel(), self.outliers)
        flat = w2d.reshape(-1)
        idx = torch.topk(flat.abs(), k, sorted=False).indices if k else flat.new_zeros(0, dtype=torch.long)
        rest = w2d if self.outliers_in_scale else flat.clone().index_fill_(0, idx, 0).reshape(w2d.shape)
        out = self._fake_quantize(rest).reshape(-1)
        out[idx] = flat[idx].to(torch.float16).to(w2d.dtype)
        return out.reshape(w2d.shape)

    def _fake_quantize(self, w2d: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return w2d.clone()
        if self.kind == "cast":
            return w2d.to(_CAST_DTYPES[self.cast_dtype]).to(w2d.dtype)
        if self.kind == "gguf":
            return _gguf_roundtrip(w2d, self.gguf_type)
        return rtn.fake_quantize(w2d, self.bits, group_size=self.group_size, per_tensor=self.per_tensor,
                                 symmetric=self.symmetric)

    def check_shape(self, shape: tuple[int, int], where: str) -> None:
        if self.kind == "gguf" and shape[1] % 32:
            raise UserError(f"{self.name} needs rows that are a multiple of 32 elements; {where} has {shape[1]}",
                            "use an RTN scheme such as w4g32 for this tensor, or keep it")

    # -- cost ----------------------------------------------------------------------------------
    def storage_bits(self, shape: tuple[int, int], orig_bits: int) -> float:
        """Bits needed to store a ``[out, in]`` tensor in this scheme: scales, zero points, and for kept
        outliers a float16 value plus an int32 index each (a COO sparse part)."""
        extra = 0.0
        if self.outliers and not self.is_identity:
            extra = n_outliers(shape[0] * shape[1], self.outliers) * (16 + 32)
        return extra + self._storage_bits(shape, orig_bits)

    def _storage_bits(self, shape: tuple[int, int], orig_bits: int) -> float:
        numel = shape[0] * shape[1]
        if self.kind == "none":
            return float(numel * orig_bits)
        if self.kind == "cast":
            return float(numel * 16)
        if self.kind == "gguf":
            import gguf

            block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[self.gguf_type.upper()]]
            return float(numel // block * type_size * 8)
        groups = rtn.n_groups(shape, self.group_size, self.per_tensor)
        per_group = 16 + (0 if self.symmetric else self.bits)
        return float(numel * self.bits + groups * per_group)


def _gguf_roundtrip(w2d: torch.Tensor, gguf_type: str) -> torch.Tensor:
    """Quantize with the ``gguf`` package's own reference code (bit-exact with it) and dequantize."""
    from gguf import GGMLQuantizationType, quants

    qtype = GGMLQuantizationType[gguf_type.upper()]
    data = w2d.detach().float().cpu().numpy()
    out = quants.dequantize(quants.quantize(np.ascontiguousarray(data), qtype), qtype)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(device=w2d.device, dtype=w2d.dtype)


NONE = Scheme(kind="none")
_OUTLIER_RE = re.compile(r"^(.*)\+outliers(-inscale)?:([0-9.]+)%$")


def n_outliers(numel: int, fraction: float) -> int:
    """How many elements a fraction keeps (rounded up, so any positive fraction keeps at least one)."""
    return min(numel, math.ceil(fraction * numel - 1e-9)) if fraction > 0 else 0


def parse_outlier_fraction(text: str, where: str) -> float:
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)%", text.strip())
    if not m or not 0 < float(m.group(1)) < 100:
        raise UserError(f"{where}: outlier share must be a percentage in (0, 100), got {text!r}", "e.g. 0.5%")
    return float(m.group(1)) / 100


def parse_scheme(text: str) -> Scheme:
    """Parse a scheme name (see the module docstring); raises :class:`UserError` with the grammar."""
    m = _OUTLIER_RE.match(text.strip().lower())
    if m:
        base = parse_scheme(m.group(1))
        if base.is_identity:
            raise UserError(f"scheme {text!r}: outliers need a quantizing scheme", SCHEME_HELP)
        return base.with_outliers(parse_outlier_fraction(m.group(3) + "%", f"scheme {text!r}"), bool(m.group(2)))
    raw = text.strip().lower()
    if raw in ("none", "fp32", "identity"):
        return NONE
    if raw in ("fp16", "bf16"):
        return Scheme(kind="cast", bits=16, cast_dtype=raw)
    gg = raw.removeprefix("gguf:")
    if gg in GGUF_TYPES:
        return Scheme(kind="gguf", bits=int(gg[1]), gguf_type=gg)
    m = _RTN_RE.match(raw)
    if not m:
        raise UserError(f"unknown scheme {text!r}", SCHEME_HELP)
    bits = int(m.group(1))
    if not 2 <= bits <= 8:
        raise UserError(f"scheme {text!r}: bits must be 2-8, got {bits}", SCHEME_HELP)
    group = int(m.group(2)) if m.group(2) else None
    if group is not None and not 1 <= group <= rtn.MAX_GROUP_SIZE:
        raise UserError(f"scheme {text!r}: group size must be 1..{rtn.MAX_GROUP_SIZE}, got {group}",
                        "e.g. w4g128; w4-channel is one group per row")
    return Scheme(kind="rtn", bits=bits, group_size=group, per_tensor=m.group(3) == "tensor",
                  symmetric=m.group(4) != "-asym")
