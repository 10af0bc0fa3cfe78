"""``hqq:w4g64``: Half-Quadratic Quantization through the ``hqq`` library itself (extra ``hqq``).

Names: ``hqq:wBgG`` (B bits, groups of G, which the library wants a multiple of 8), ``hqq:wB`` (one group per row),
each optionally ``-axis0`` (groups along the library's axis 0 instead of its default axis 1, the input dimension of a
linear layer) and ``-noopt`` (min-max scales and zero points without the library's proximal optimization). The bit
widths are those the library supports (1.58 aside): 1, 2, 3, 4, 5, 6, 8.

A 2-D ``[out, in]`` weight is quantized by the library's own layer, ``HQQLinear``, with the library's default
configuration (``BaseQuantizeConfig``) and compute dtype (float16) on the CPU, and dequantized by that layer; the
result is cast back to the weight's dtype. Its bit cost is what that layer stores, read from its tensors: the packed
codes (5- and 6-bit codes take a byte each, 3-bit ones ten to an int32, their number padded to a multiple of ten)
plus a float16 scale and zero point per group.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ...errors import UserError
from .base import SchemeKind, require_extra
from .library import LibraryScheme, linear_of

EXTRA = "hqq"
_SYNTAX = re.compile(r"^hqq:w(\d+)(?:g(\d+))?((?:-axis[01]|-noopt)*)$")


def _library():
    require_extra("hqq", EXTRA, "hqq schemes")
    from hqq.core import quantize

    return quantize


@dataclass(frozen=True)
class HQQ(LibraryScheme):
    library = "the hqq library"
    shape_hint = "choose a group size whose groups fill the tensor in the numbers the library packs, or keep it"
    #: The library's default compute dtype, in which ``HQQLinear`` keeps its scales and zero points and computes.
    compute_dtype = torch.float16
    bits: int
    group_size: int | None = 64  # None: one group per row (axis 1) or per column (axis 0)
    axis: int = 1
    optimize: bool = True

    @property
    def base_name(self) -> str:
        group = f"g{self.group_size}" if self.group_size else ""
        return f"hqq:w{self.bits}{group}{'-axis0' if self.axis == 0 else ''}{'' if self.optimize else '-noopt'}"

    def config(self) -> dict:
        """The library's ``BaseQuantizeConfig`` for this scheme."""
        q = _library()
        cfg = q.BaseQuantizeConfig(nbits=self.bits, group_size=self.group_size, axis=self.axis)
        cfg["weight_quant_params"]["optimize"] = self.optimize
        return cfg

    def library_module(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        """The library's quantized layer (``HQQLinear``, on the CPU) made from a ``[out, in]`` weight."""
        q = _library()
        lin = linear_of(weight, bias, torch.float32)  # the library finds its scales in float32, keeps them in float16
        return q.HQQLinear(lin, self.config(), compute_dtype=self.compute_dtype, device="cpu")

    def stored_tensors(self, layer: torch.nn.Module) -> list[torch.Tensor]:
        codes, meta = getattr(layer, "W_q"), getattr(layer, "meta")  # an HQQLinear's packed codes and meta-data
        return [codes] + [v for v in meta.values() if isinstance(v, torch.Tensor)]

    def probe_options(self) -> dict:
        return {"optimize": False}  # the optimization changes values, never sizes

    def _fake_quantize(self, w2d: torch.Tensor) -> torch.Tensor:
        layer = self.library_module(w2d)
        return layer.dequantize().to(device=w2d.device, dtype=w2d.dtype)


def _parse(text: str) -> HQQ | None:
    m = _SYNTAX.match(text)
    if not m:
        return None
    options = [o for o in m.group(3).split("-") if o]
    if len(options) != len(set(options)) or {"axis0", "axis1"} <= set(options):
        raise UserError("each option at most once (one axis)", f"write {KIND.syntax}")
    bits, group = int(m.group(1)), int(m.group(2)) if m.group(2) else None
    q = _library()
    if bits not in q.Quantizer.SUPPORTED_BITS:
        supported = ", ".join(str(b) for b in q.Quantizer.SUPPORTED_BITS if b == int(b))
        raise UserError(f"the hqq library does not quantize to {bits} bits", f"use one of {supported}")
    scheme = HQQ(bits=bits, group_size=group, axis=0 if "axis0" in options else 1, optimize="noopt" not in options)
    try:
        scheme.config()
    except AssertionError as e:
        raise UserError(f"the hqq library refuses group size {group} ({e})", "use a multiple of 8, e.g. 64") from None
    return scheme


KIND = SchemeKind(
    name="hqq",
    syntax="hqq:wBgG or hqq:wB with B bits 1-6 or 8, optionally -axis0 and -noopt (e.g. hqq:w4g64)",
    examples=(
        ("hqq:w4g64", "HQQ (hqq library) 4-bit, groups of 64 inputs, optimized zero points, fp16 scales/zeros"),
        ("hqq:w3g64", "HQQ 3-bit (ten codes per int32)"),
        ("hqq:w4g64-noopt", "the same 4-bit grid without the proximal optimization (min-max)"),
    ),
    parse=_parse,
    colon_name=r"hqq:w[0-9]+(?:g[0-9]+)?(?:-axis[01]|-noopt)*",
)
