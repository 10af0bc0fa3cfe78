"""``gguf:q4_0`` (or bare ``q4_0``): llama.cpp's legacy block types through the ``gguf`` package's own
reference code, bit-exact with it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...errors import UserError
from .base import Scheme, SchemeKind

TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")
BLOCK = 32  # elements per block of every type above


@dataclass(frozen=True)
class GGUF(Scheme):
    gguf_type: str  # one of TYPES

    @property
    def base_name(self) -> str:
        return f"gguf:{self.gguf_type}"

    def _fake_quantize(self, w2d: torch.Tensor) -> torch.Tensor:
        from gguf import GGMLQuantizationType, quants

        qtype = GGMLQuantizationType[self.gguf_type.upper()]
        data = w2d.detach().float().cpu().numpy()
        out = quants.dequantize(quants.quantize(np.ascontiguousarray(data), qtype), qtype)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(device=w2d.device, dtype=w2d.dtype)

    def _check_shape(self, shape: tuple[int, int], where: str) -> None:
        if shape[1] % BLOCK:
            raise UserError(
                f"{self.name} needs rows that are a multiple of {BLOCK} elements; {where} has {shape[1]}",
                "use an RTN scheme such as w4g32 for this tensor, or keep it",
            )

    def _storage_bits(self, shape: tuple[int, int], orig_bits: int) -> float:
        import gguf

        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[self.gguf_type.upper()]]
        return float(shape[0] * shape[1] // block * type_size * 8)


def _parse(text: str) -> GGUF | None:
    gguf_type = text.removeprefix("gguf:")
    return GGUF(gguf_type=gguf_type) if gguf_type in TYPES else None


KIND = SchemeKind(
    name="gguf",
    syntax="gguf:" + ", ".join(TYPES),
    examples=(
        ("gguf:q4_0", "llama.cpp Q4_0 (via the gguf package, bit-exact)"),
        ("gguf:q4_1", "llama.cpp Q4_1"),
        ("gguf:q5_0", "llama.cpp Q5_0"),
        ("gguf:q5_1", "llama.cpp Q5_1"),
        ("gguf:q8_0", "llama.cpp Q8_0"),
    ),
    parse=_parse,
    colon_name=r"gguf:[a-z0-9_]+",
)
