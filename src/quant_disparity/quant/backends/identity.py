"""``none`` (also ``fp32``, ``identity``): the weight is left as it is. ``reference``: the same transform as a
scheme that counts as applied, so that element ablations can ride on it (``reference+zero-at:507x1229``, what a
plan's ``zero:super`` gives a tensor no other rule quantizes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import Scheme, SchemeKind


@dataclass(frozen=True)
class Identity(Scheme):
    is_identity: ClassVar[bool] = True

    @property
    def base_name(self) -> str:
        return "none"

    def _fake_quantize(self, w2d: torch.Tensor) -> torch.Tensor:
        return w2d.clone()

    def _storage_bits(self, shape: tuple[int, int], orig_bits: int) -> float:
        return float(shape[0] * shape[1] * orig_bits)


NONE = Identity()

KIND = SchemeKind(
    name="none",
    syntax="none",
    examples=(("none", "identity"),),
    parse=lambda text: NONE if text in ("none", "fp32", "identity") else None,
)


@dataclass(frozen=True)
class Reference(Identity):
    is_identity: ClassVar[bool] = False

    @property
    def base_name(self) -> str:
        return "reference"


REFERENCE_KIND = SchemeKind(
    name="reference",
    syntax="reference",
    examples=(("reference", "the weight as it is, applied (carries +zero-at: ablations)"),),
    parse=lambda text: Reference() if text == "reference" else None,
)
