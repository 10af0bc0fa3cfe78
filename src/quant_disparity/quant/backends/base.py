"""What a scheme kind provides: a :class:`Scheme` (the options, the transform, the bit cost) and a
:class:`SchemeKind` entry that parses the kind's names."""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass(frozen=True, kw_only=True)
class Scheme(ABC):
    """A weight transform. Subclasses are frozen dataclasses of their kind's options and implement
    ``base_name``, ``_fake_quantize`` and ``_storage_bits``.

    Element-level protection, common to every quantizing scheme: this fraction of the largest-magnitude
    weights of the tensor is kept in float16 as a sparse part. By default the scale is computed on the
    remaining weights; ``outliers_in_scale`` reproduces the original log's flaw (kept outliers still set it).
    """

    is_identity: ClassVar[bool] = False
    outliers: float = 0.0
    outliers_in_scale: bool = False

    @property
    @abstractmethod
    def base_name(self) -> str:
        """The name without the outlier modifier; the kind's ``parse`` reads it back to an equal scheme."""

    @property
    def name(self) -> str:
        if not self.outliers:
            return self.base_name
        return f"{self.base_name}+outliers{'-inscale' if self.outliers_in_scale else ''}:{100 * self.outliers:g}%"

    def __str__(self) -> str:
        return self.name

    def with_outliers(self, fraction: float, in_scale: bool = False) -> Scheme:
        return dataclasses.replace(self, outliers=fraction, outliers_in_scale=in_scale)

    # -- the transform -------------------------------------------------------------------------
    def fake_quantize(self, w2d: torch.Tensor) -> torch.Tensor:
        """Quantize and dequantize a 2-D ``[out, in]`` weight; returns a new tensor of the same dtype."""
        if self.outliers and not self.is_identity:
            return self._with_outliers(w2d)
        return self._fake_quantize(w2d)

    def _with_outliers(self, w2d: torch.Tensor) -> torch.Tensor:
        k = n_outliers(w2d.numel(), self.outliers)
        flat = w2d.reshape(-1)
        idx = torch.topk(flat.abs(), k, sorted=False).indices if k else flat.new_zeros(0, dtype=torch.long)
        rest = w2d if self.outliers_in_scale else flat.clone().index_fill_(0, idx, 0).reshape(w2d.shape)
        out = self._fake_quantize(rest).reshape(-1)
        out[idx] = flat[idx].to(torch.float16).to(w2d.dtype)
        return out.reshape(w2d.shape)

    @abstractmethod
    def _fake_quantize(self, w2d: torch.Tensor) -> torch.Tensor:
        """The kind's own transform of a 2-D ``[out, in]`` weight (a new tensor of the same dtype)."""

    def check_shape(self, shape: tuple[int, int], where: str) -> None:
        """Raise a :class:`UserError` when the scheme cannot quantize a ``[out, in]`` tensor (default: any can)."""

    # -- cost ----------------------------------------------------------------------------------
    def storage_bits(self, shape: tuple[int, int], orig_bits: int) -> float:
        """Bits needed to store a ``[out, in]`` tensor in this scheme: scales, zero points, and for kept
        outliers a float16 value plus an int32 index each (a COO sparse part)."""
        extra = 0.0
        if self.outliers and not self.is_identity:
            extra = n_outliers(shape[0] * shape[1], self.outliers) * (16 + 32)
        return extra + self._storage_bits(shape, orig_bits)

    @abstractmethod
    def _storage_bits(self, shape: tuple[int, int], orig_bits: int) -> float:
        """Bits of the kind's own storage of a ``[out, in]`` tensor whose weights have ``orig_bits`` each."""


def n_outliers(numel: int, fraction: float) -> int:
    """How many elements a fraction keeps (rounded up, so any positive fraction keeps at least one)."""
    return min(numel, math.ceil(fraction * numel - 1e-9)) if fraction > 0 else 0


@dataclass(frozen=True)
class SchemeKind:
    """A registry entry: one kind of scheme and the names it reads.

    ``parse`` gets a stripped, lower-case name without the ``+outliers`` modifier and returns its scheme, or
    None when the name is not written in this kind's syntax; a name in the syntax with bad options raises a
    :class:`UserError` saying what is wrong with them (``parse_scheme`` puts the scheme in front).
    """

    name: str
    syntax: str  # how the kind's names are written, for help and error hints
    examples: tuple[tuple[str, str], ...]  # (scheme name, what it does), for listings
    parse: Callable[[str], Scheme | None]
    colon_name: str | None = None  # a regex of the kind's names that hold a colon, which plans must not split at
