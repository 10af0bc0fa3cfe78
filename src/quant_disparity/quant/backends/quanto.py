"""``quanto:w4`` / ``quanto:w8``: weight quantization through ``optimum.quanto`` itself (extra ``quanto``).

Names: ``quanto:w8`` (the library's qint8: symmetric, one absmax scale per output channel), ``quanto:w4`` and
``quanto:w2`` (qint4 / qint2: affine, min-max scale and float shift per group, the group size chosen as the
library's ``QLinear`` chooses it: 128, else the largest of 96, 64, 32 that divides the input width, else one group
per output channel), and ``quanto:w4gG`` / ``quanto:w2gG`` with an explicit group size (a divisor of the input
width; the library takes no group size for 8 bits).

A 2-D ``[out, in]`` weight is put in a float16 ``torch.nn.Linear`` (as in a float16 deployment), turned into the
library's ``QLinear`` and frozen (its weight becomes the library's packed tensor), then dequantized by the library;
the result is cast back to the weight's dtype. Its bit cost is what that frozen weight stores, read from its inner
tensors: codes (int8, or uint8 holding two 4-bit or four 2-bit codes) plus float16 scales (and shifts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ...errors import UserError
from .base import SchemeKind, require_extra
from .library import LibraryScheme, linear_of

EXTRA = "quanto"
BITS = (2, 4, 8)
_SYNTAX = re.compile(r"^quanto:w(\d+)(?:g(\d+))?$")


def _library():
    require_extra("optimum.quanto", EXTRA, "quanto schemes")
    import optimum.quanto as quanto

    return quanto


@dataclass(frozen=True)
class Quanto(LibraryScheme):
    library = "optimum-quanto"
    shape_hint = "use a group size that divides the tensor's rows, or keep it"
    #: The dtype of the linear layer the library quantizes, and so of its scales, shifts and computation.
    compute_dtype = torch.float16
    bits: int
    group_size: int | None = None  # None: the library's QLinear chooses

    @property
    def base_name(self) -> str:
        return f"quanto:w{self.bits}{f'g{self.group_size}' if self.group_size else ''}"

    def library_module(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        """The library's frozen ``QLinear`` (float16, on the CPU) made from a ``[out, in]`` weight."""
        quanto = _library()
        lin = linear_of(weight, bias, self.compute_dtype)
        qtype = {2: quanto.qint2, 4: quanto.qint4, 8: quanto.qint8}[self.bits]
        layer = quanto.QLinear.from_module(lin, weights=qtype)
        if self.group_size is not None:
            layer.weight_group_size = self.group_size
        layer.freeze()
        return layer

    def _fake_quantize(self, w2d: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.library_module(w2d).weight.dequantize().to(device=w2d.device, dtype=w2d.dtype)

    def stored_tensors(self, layer: torch.nn.Module) -> list[torch.Tensor]:
        """The frozen weight's inner tensors (a packed code tensor as the bytes behind it)."""
        qweight = getattr(layer, "weight")  # a quanto QTensor
        names, _ = qweight.__tensor_flatten__()
        out = []
        for name in names:
            t = getattr(qweight, name)
            out.append(t._data if hasattr(t, "_data") else t)  # PackedTensor: the uint8 bytes behind it
        return out


def _parse(text: str) -> Quanto | None:
    m = _SYNTAX.match(text)
    if not m:
        return None
    bits, group = int(m.group(1)), int(m.group(2)) if m.group(2) else None
    _library()
    if bits not in BITS:
        raise UserError(f"optimum-quanto has no {bits}-bit integer weights", "use quanto:w2, quanto:w4 or quanto:w8")
    if group is not None and bits == 8:
        raise UserError("optimum-quanto takes no group size for 8-bit weights", "write quanto:w8 (one scale per row)")
    if group is not None and group < 1:
        raise UserError(f"group size must be positive, got {group}", "e.g. quanto:w4g64")
    return Quanto(bits=bits, group_size=group)


KIND = SchemeKind(
    name="quanto",
    syntax="quanto:w8, quanto:wB or quanto:wBgG with B 2 or 4 (e.g. quanto:w4)",
    examples=(
        ("quanto:w4", "optimum-quanto qint4, groups as its QLinear picks them (128 where they fit), fp16 scale+shift"),
        ("quanto:w4g64", "optimum-quanto qint4, groups of 64 inputs"),
        ("quanto:w8", "optimum-quanto qint8, symmetric, one fp16 scale per output channel"),
    ),
    parse=_parse,
    colon_name=r"quanto:w[0-9]+(?:g[0-9]+)?",
)
