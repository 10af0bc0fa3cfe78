"""``artifact``: a tensor whose quantized value comes from a pre-quantized artifact (a GGUF file, a GPTQ/AWQ or
compressed-tensors checkpoint, a plain Hugging Face directory), dequantized when it was read.

Not a kind a user writes: :mod:`quant_disparity.models.artifact` makes one per tensor of the artifact, so that
the artifact's weights enter the model through the same :class:`~quant_disparity.quant.engine.QuantEngine`
(evaluation, caching and restore stay one code path) and :func:`~quant_disparity.quant.engine.cost` counts the
bits the artifact really stores. The name carries the artifact's digest, so two artifacts never share a cached
tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...errors import UserError
from .base import Scheme


@dataclass(frozen=True, kw_only=True)
class ArtifactTensor(Scheme):
    digest: str  # sha256 of the artifact
    stored: str  # how the artifact stores the tensor, e.g. "q4_k", "bf16", "gptq-w4g128"
    bits: float  # bits the artifact spends on the tensor (scales, zero points and indices included)
    #: the dequantized value in the ``[out, in]`` view; None for a tensor equal to the reference (counted in the
    #: cost, never put into the model)
    values: torch.Tensor | None = field(default=None, compare=False, hash=False, repr=False)

    @property
    def base_name(self) -> str:
        return f"artifact:{self.digest[:12]}:{self.stored}"

    def _fake_quantize(self, w2d: torch.Tensor) -> torch.Tensor:
        if self.values is None:
            return w2d.clone()
        return self.values.to(device=w2d.device, dtype=w2d.dtype)

    def _check_shape(self, shape: tuple[int, int], where: str) -> None:
        if self.values is not None and tuple(self.values.shape) != shape:
            raise UserError(f"{where}: the artifact's tensor is {list(self.values.shape)}, the model's {list(shape)}")

    def _storage_bits(self, shape: tuple[int, int], orig_bits: int) -> float:
        return float(self.bits)
