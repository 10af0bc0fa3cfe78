"""What a scheme kind made by a quantizing library provides beyond a :class:`~.base.Scheme`: the library's own
quantized layer (for the library's forward, :mod:`..real`) and a bit cost read from that layer's tensors."""

from __future__ import annotations

import dataclasses
import functools
from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from ...errors import UserError
from .base import Scheme


@dataclass(frozen=True, kw_only=True)
class LibraryScheme(Scheme):
    """A scheme whose quantization is a library's: ``library_module`` makes the library's quantized layer from a
    ``[out, in]`` weight, ``stored_tensors`` lists what that layer stores. Shapes and bit costs come from a layer
    made once per shape (:func:`_stored_bits`); a shape the library refuses is a :class:`UserError`."""

    #: The library in messages, e.g. "the hqq library".
    library: ClassVar[str]
    #: What to do about a shape the library refuses.
    shape_hint: ClassVar[str]
    #: The dtype the library's layer keeps its scales in and computes in.
    compute_dtype: ClassVar[torch.dtype] = torch.float16

    @abstractmethod
    def library_module(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.nn.Module:
        """The library's quantized layer (on the CPU) made from a ``[out, in]`` weight and an optional bias."""

    @abstractmethod
    def stored_tensors(self, layer: torch.nn.Module) -> list[torch.Tensor]:
        """The tensors ``layer`` (from :meth:`library_module`) stores: codes as packed, scales, zero points."""

    def probe_weight(self, shape: tuple[int, int]) -> torch.Tensor:
        """The weight a shape is probed with (its values do not change what is stored)."""
        return torch.linspace(-1, 1, shape[0] * shape[1]).reshape(shape)

    def probe_options(self) -> dict:
        """Options of the scheme a shape is probed with, where they change values but not what is stored."""
        return {}

    def _check_shape(self, shape: tuple[int, int], where: str) -> None:
        self._stored(shape, where)

    def _storage_bits(self, shape: tuple[int, int], orig_bits: int) -> float:
        return self._stored(shape, "a tensor")

    def _stored(self, shape: tuple[int, int], where: str) -> float:
        plain = dataclasses.replace(
            self,
            outliers=0.0,
            outliers_in_scale=False,
            keep_rows=(),
            keep_cols=(),
            keep_points=(),
            zero_points=(),
            **self.probe_options(),
        )
        bits = _stored_bits(plain, shape)
        if isinstance(bits, str):
            raise UserError(
                f"{self.base_name} cannot quantize {where} ([{shape[0]}, {shape[1]}]): {self.library} refuses it "
                f"({bits})",
                self.shape_hint,
            )
        return bits


def linear_of(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.nn.Linear:
    """A CPU ``torch.nn.Linear`` in ``dtype`` holding copies of a ``[out, in]`` weight and a bias (what the
    libraries turn into their quantized layers)."""
    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=dtype)
    with torch.no_grad():
        lin.weight.data = weight.detach().to("cpu", dtype).clone()
        if bias is not None:
            lin.bias.data = bias.detach().to("cpu", dtype).clone()
    return lin


@functools.cache
def _stored_bits(scheme: LibraryScheme, shape: tuple[int, int]) -> float | str:
    """Bits the library's layer stores for a ``[out, in]`` weight, read from its tensors (one layer per scheme and
    shape); the library's complaint when it refuses the shape."""
    try:
        layer = scheme.library_module(scheme.probe_weight(shape))
    except (AssertionError, RuntimeError, ValueError) as e:
        return " ".join(str(e).split()) or type(e).__name__
    return float(sum(t.numel() * t.element_size() * 8 for t in scheme.stored_tensors(layer)))
