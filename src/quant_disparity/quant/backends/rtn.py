"""Round-to-nearest integer schemes (the math in :mod:`..rtn`):

``w4g128`` 4 bits, groups of 128 input elements, symmetric; ``w4g128-asym`` with an integer zero point per group;
``w8-channel`` one scale per output channel; ``w4-tensor`` one scale for the whole tensor (the original log's
quantizer). Bits are 2-8. Scales are float16 (16 bits per group); a zero point costs the scheme's bits per group.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ...errors import UserError
from .. import rtn
from .base import Scheme, SchemeKind

_SYNTAX = re.compile(r"^w(\d+)(?:g(\d+)|-(channel|tensor))(-asym|-sym)?$")


@dataclass(frozen=True)
class RTN(Scheme):
    bits: int
    group_size: int | None = None  # None: one group per row (per-channel)
    per_tensor: bool = False
    symmetric: bool = True

    @property
    def base_name(self) -> str:
        gran = "-tensor" if self.per_tensor else ("-channel" if self.group_size is None else f"g{self.group_size}")
        return f"w{self.bits}{gran}{'' if self.symmetric else '-asym'}"

    def _fake_quantize(self, w2d: torch.Tensor) -> torch.Tensor:
        return rtn.fake_quantize(
            w2d, self.bits, group_size=self.group_size, per_tensor=self.per_tensor, symmetric=self.symmetric
        )

    def _storage_bits(self, shape: tuple[int, int], orig_bits: int) -> float:
        return rtn.storage_bits(shape, self.bits, self.group_size, self.per_tensor, self.symmetric)


def _parse(text: str) -> RTN | None:
    m = _SYNTAX.match(text)
    if not m:
        return None
    bits = int(m.group(1))
    if not 2 <= bits <= 8:
        raise UserError(f"bits must be 2-8, got {bits}", f"write {KIND.syntax}")
    group = int(m.group(2)) if m.group(2) else None
    if group is not None and not 1 <= group <= rtn.MAX_GROUP_SIZE:
        raise UserError(
            f"group size must be 1..{rtn.MAX_GROUP_SIZE}, got {group}", "e.g. w4g128; w4-channel is one group per row"
        )
    return RTN(bits=bits, group_size=group, per_tensor=m.group(3) == "tensor", symmetric=m.group(4) != "-asym")


KIND = SchemeKind(
    name="rtn",
    syntax="wBgG, wB-channel or wB-tensor with B bits 2-8, optionally -asym (e.g. w4g128, w8-channel-asym)",
    examples=(
        ("w4g128", "4-bit RTN, groups of 128 inputs, symmetric, fp16 scales"),
        ("w4g128-asym", "the same with an integer zero point per group"),
        ("w3g64", "3-bit RTN, groups of 64"),
        ("w8-channel", "8-bit, one scale per output channel"),
        ("w4-tensor", "4-bit, one scale per tensor (the original log's quantizer)"),
    ),
    parse=_parse,
)
