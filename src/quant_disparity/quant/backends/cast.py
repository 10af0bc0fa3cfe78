"""``fp16`` and ``bf16``: cast to 16-bit floating point and back."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Scheme, SchemeKind

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Cast(Scheme):
    dtype: str  # a key of DTYPES

    @property
    def base_name(self) -> str:
        return self.dtype

    def _fake_quantize(self, w2d: torch.Tensor) -> torch.Tensor:
        return w2d.to(DTYPES[self.dtype]).to(w2d.dtype)

    def _storage_bits(self, shape: tuple[int, int], orig_bits: int) -> float:
        return float(shape[0] * shape[1] * 16)


KIND = SchemeKind(
    name="cast",
    syntax=", ".join(DTYPES),
    examples=(("fp16", "cast to float16"), ("bf16", "cast to bfloat16")),
    parse=lambda text: Cast(dtype=text) if text in DTYPES else None,
)
