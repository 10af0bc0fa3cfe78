"""An example third-party scheme kind, used by tests/test_registry.py: ``step:S`` rounds every weight to the
nearest multiple of S and stores it as an 8-bit code plus one 16-bit step per tensor.

A package makes it available with an entry point::

    [project.entry-points."quant_disparity.schemes"]
    step = "qd_example_scheme:KIND"
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from quant_disparity.errors import UserError
from quant_disparity.quant import Scheme, SchemeKind


@dataclass(frozen=True)
class Step(Scheme):
    step: float

    @property
    def base_name(self) -> str:
        return f"step:{self.step:g}"

    def _fake_quantize(self, w2d: torch.Tensor) -> torch.Tensor:
        return (torch.round(w2d.float() / self.step) * self.step).to(w2d.dtype)

    def _storage_bits(self, shape: tuple[int, int], orig_bits: int) -> float:
        return float(shape[0] * shape[1] * 8 + 16)


def _parse(text: str) -> Step | None:
    m = re.fullmatch(r"step:([0-9]*\.?[0-9]+)", text)
    if not m:
        return None
    if not float(m.group(1)) > 0:
        raise UserError("the step must be positive", "e.g. step:0.0625")
    return Step(step=float(m.group(1)))


KIND = SchemeKind(
    name="step",
    syntax="step:S (every weight to the nearest multiple of S)",
    examples=(("step:0.0625", "every weight to the nearest multiple of 1/16"),),
    parse=_parse,
    colon_name=r"step:[0-9.]+",
)
