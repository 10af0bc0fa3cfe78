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

import functools
import re
from dataclasses import dataclass

import torch

from ...errors import UserError
from .base import Scheme, SchemeKind, require_extra

EXTRA = "quanto"
#: The dtype of the linear layer the library quantizes, and so of its scales, shifts and computation.
COMPUTE_DTYPE = torch.float16
BITS = (2, 4, 8)
_SYNTAX = re.compile(r"^quanto:w(\d+)(?:g(\d+))?$")


def _library():
    require_extra("optimum.quanto", EXTRA, "quanto schemes")
    import optimum.quanto as quanto

    return quanto


@dataclass(frozen=True)
class Quanto(Scheme):
    bits: int
    group_size: int | None = None  # None: the library's QLinear chooses

    @property
    def base_name(self) -> str:
        return f"quanto:w{self.bits}{f'g{self.group_size}' if self.group_size else ''}"

    @property
    def compute_dtype(self) -> torch.dtype:
        return COMPUTE_DTYPE

    def library_module(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        """The library's frozen ``QLinear`` (float16, on the CPU) made from a ``[out, in]`` weight."""
        quanto = _library()
        lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=COMPUTE_DTYPE)
        with torch.no_grad():
            lin.weight.data = weight.detach().to("cpu", COMPUTE_DTYPE).clone()
            if bias is not None:
                lin.bias.data = bias.detach().to("cpu", COMPUTE_DTYPE).clone()
        qtype = {2: quanto.qint2, 4: quanto.qint4, 8: quanto.qint8}[self.bits]
        layer = quanto.QLinear.from_module(lin, weights=qtype)
        if self.group_size is not None:
            layer.weight_group_size = self.group_size
        layer.freeze()
        return layer

    def _fake_quantize(self, w2d: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.library_module(w2d).weight.dequantize().to(device=w2d.device, dtype=w2d.dtype)

    def _check_shape(self, shape: tuple[int, int], where: str) -> None:
        self._stored(shape, where)

    def _storage_bits(self, shape: tuple[int, int], orig_bits: int) -> float:
        return self._stored(shape, "a tensor")

    def _stored(self, shape: tuple[int, int], where: str) -> float:
        bits = _stored_bits(self.bits, self.group_size, shape)
        if isinstance(bits, str):
            raise UserError(
                f"{self.base_name} cannot quantize {where} ([{shape[0]}, {shape[1]}]): optimum-quanto refuses it "
                f"({bits})",
                "use a group size that divides the tensor's rows, or keep it",
            )
        return bits


def stored_tensors(qweight) -> list[torch.Tensor]:
    """The tensors a frozen quanto weight stores (a packed code tensor as its bytes)."""
    names, _ = qweight.__tensor_flatten__()
    out = []
    for name in names:
        t = getattr(qweight, name)
        out.append(t._data if hasattr(t, "_data") else t)  # PackedTensor: the uint8 bytes behind it
    return out


@functools.cache
def _stored_bits(bits: int, group_size: int | None, shape: tuple[int, int]) -> float | str:
    """Bits the library's frozen weight stores for a ``[out, in]`` weight (read from its tensors; made once per
    shape from a ramp weight); the library's complaint when it refuses the shape."""
    ramp = torch.linspace(-1, 1, shape[0] * shape[1]).reshape(shape)
    try:
        layer = Quanto(bits=bits, group_size=group_size).library_module(ramp)
    except (AssertionError, RuntimeError, ValueError) as e:
        return " ".join(str(e).split()) or type(e).__name__
    return float(sum(t.numel() * t.element_size() * 8 for t in stored_tensors(layer.weight)))


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
