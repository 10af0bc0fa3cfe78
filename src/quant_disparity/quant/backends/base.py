"""What a scheme kind provides: a :class:`Scheme` (the options, the transform, the bit cost) and a
:class:`SchemeKind` entry that parses the kind's names."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from ...errors import UserError

if TYPE_CHECKING:
    from ...models.modules import ModuleMap, ParamInfo
    from ..site_stats import SiteStats


@dataclass(frozen=True, kw_only=True)
class Scheme(ABC):
    """A weight transform. Subclasses are frozen dataclasses of their kind's options and implement
    ``base_name``, ``_fake_quantize`` and ``_storage_bits``.

    Element-level protection, common to every quantizing scheme: this fraction of the largest-magnitude
    weights of the tensor is kept in float16 as a sparse part. By default the scale is computed on the
    remaining weights; ``outliers_in_scale`` reproduces the original log's flaw (kept outliers still set it).

    Structured protection (attention heads, MLP neurons): ``keep_rows`` / ``keep_cols`` name rows and columns
    of the ``[out, in]`` view (sorted, disjoint, half-open ranges) that stay at the reference precision. The
    scheme quantizes the remaining rows and columns as one compact ``[out - r, in - c]`` matrix (its groups and
    scales formed from those weights alone), which is also what its bit cost counts; the kept elements cost
    their reference width each (the ranges themselves follow from the plan: no per-element index).
    """

    is_identity: ClassVar[bool] = False
    #: Whether the kind quantizes with calibration statistics of the tensor's input (GPTQ, AWQ): it then
    #: implements ``_calibrated`` and the engine hands it the statistics (:mod:`..calibration`).
    needs_calibration: ClassVar[bool] = False
    outliers: float = 0.0
    outliers_in_scale: bool = False
    keep_rows: tuple[tuple[int, int], ...] = ()
    keep_cols: tuple[tuple[int, int], ...] = ()
    #: Single elements ``(row, column)`` of the ``[out, in]`` view kept at their reference value (super weights):
    #: set to 0 before the rest is quantized (so they set no scale), then put back; each costs its reference
    #: width plus a 32-bit index, as a sparse part.
    keep_points: tuple[tuple[int, int], ...] = ()
    #: Single elements set to 0 (an ablation, e.g. ``zero:super``): 0 before and after quantizing; each costs a
    #: 32-bit index (the value is implied).
    zero_points: tuple[tuple[int, int], ...] = ()
    #: For calibrated kinds: the key of the calibration statistics the scheme quantizes with (``cal-<digest>``,
    #: :mod:`..calibration`); part of the name, so that caches and trial keys tell calibrations apart.
    calibration: str = ""

    @property
    @abstractmethod
    def base_name(self) -> str:
        """The name without the outlier modifier; the kind's ``parse`` reads it back to an equal scheme."""

    @property
    def name(self) -> str:
        name = self.base_name
        if self.calibration:
            name += f"@{self.calibration}"
        if self.outliers:
            name += f"+outliers{'-inscale' if self.outliers_in_scale else ''}:{100 * self.outliers:g}%"
        if self.keep_rows:
            name += f"+keep-rows:{format_ranges(self.keep_rows)}"
        if self.keep_cols:
            name += f"+keep-cols:{format_ranges(self.keep_cols)}"
        if self.keep_points:
            name += f"+keep-at:{format_points(self.keep_points)}"
        if self.zero_points:
            name += f"+zero-at:{format_points(self.zero_points)}"
        return name

    @property
    def partial(self) -> bool:
        """Whether whole rows or columns of the tensor are kept (see the class docstring)."""
        return bool(self.keep_rows or self.keep_cols)

    def __str__(self) -> str:
        return self.name

    def with_outliers(self, fraction: float, in_scale: bool = False) -> Scheme:
        return dataclasses.replace(self, outliers=fraction, outliers_in_scale=in_scale)

    def with_kept(self, rows: Iterable[int] = (), cols: Iterable[int] = ()) -> Scheme:
        """This scheme with the given rows and columns (indices of the ``[out, in]`` view) kept as well."""
        if self.is_identity:
            return self
        return dataclasses.replace(
            self,
            keep_rows=to_ranges(set(range_indices(self.keep_rows)) | set(rows)),
            keep_cols=to_ranges(set(range_indices(self.keep_cols)) | set(cols)),
        )

    def with_points(self, keep: Iterable[tuple[int, int]] = (), zero: Iterable[tuple[int, int]] = ()) -> Scheme:
        """This scheme with single elements ``(row, column)`` kept at their reference value or set to 0 as well
        (a point both kept and zeroed is zeroed)."""
        zero_pts = tuple(sorted(set(self.zero_points) | set(zero)))
        keep_pts = tuple(sorted((set(self.keep_points) | set(keep)) - set(zero_pts)))
        return dataclasses.replace(self, keep_points=keep_pts, zero_points=zero_pts)

    def kept_elements(self, shape: tuple[int, int]) -> int:
        """How many elements of a ``[out, in]`` tensor the kept rows, columns and points hold (a point inside
        a kept row or column counted once)."""
        if self.is_identity:
            return 0
        return self._kept_by_ranges(shape) + len(self._own_points(self.keep_points))

    def _kept_by_ranges(self, shape: tuple[int, int]) -> int:
        if not self.partial:
            return 0
        rows, cols = self._rest(shape)
        return shape[0] * shape[1] - len(rows) * len(cols)

    def _own_points(self, points: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """The points not already inside a kept row or column."""
        kr, kc = set(range_indices(self.keep_rows)), set(range_indices(self.keep_cols))
        return [(r, c) for r, c in points if r not in kr and c not in kc]

    def _rest(self, shape: tuple[int, int]) -> tuple[list[int], list[int]]:
        """The rows and columns that are quantized (not kept)."""
        kr, kc = set(range_indices(self.keep_rows)), set(range_indices(self.keep_cols))
        return [i for i in range(shape[0]) if i not in kr], [j for j in range(shape[1]) if j not in kc]

    def bind(self, p: ParamInfo, modmap: ModuleMap) -> Scheme:
        """The scheme as it applies to tensor ``p`` of ``modmap`` (default: itself). A kind whose stored format
        depends on the tensor (llama.cpp's fallback for row lengths, a per-tensor recipe) returns the scheme really
        applied, so that its name records what is stored. Called once per tensor, after kept rows, columns and
        points are added."""
        return self

    # -- the transform -------------------------------------------------------------------------
    def fake_quantize(self, w2d: torch.Tensor, stats: SiteStats | None = None) -> torch.Tensor:
        """Quantize and dequantize a 2-D ``[out, in]`` weight; returns a new tensor of the same dtype.

        ``stats``: the calibration statistics of the tensor's input, for kinds that need them (kept columns
        take their input channels out of the statistics too; kept points and outliers are set to 0 first)."""
        if self.keep_points or self.zero_points:
            points = self.keep_points + self.zero_points
            r = torch.tensor([p[0] for p in points], dtype=torch.long, device=w2d.device)
            c = torch.tensor([p[1] for p in points], dtype=torch.long, device=w2d.device)
            src = w2d.clone()
            src[r, c] = 0  # they set no scale
            out = dataclasses.replace(self, keep_points=(), zero_points=()).fake_quantize(src, stats)
            k = len(self.keep_points)
            out[r[:k], c[:k]] = w2d[r[:k], c[:k]]
            out[r[k:], c[k:]] = 0
            return out
        if self.partial and not self.is_identity:
            rows, cols = self._rest(tuple(w2d.shape))  # type: ignore[arg-type]  # 2-D
            out = w2d.clone()
            if rows and cols:
                r = torch.tensor(rows, device=w2d.device)
                c = torch.tensor(cols, device=w2d.device)
                sub = w2d.index_select(0, r).index_select(1, c).contiguous()
                out[r[:, None], c[None, :]] = self._whole(sub, None if stats is None else stats.columns(c.cpu()))
            return out
        return self._whole(w2d, stats)

    def _whole(self, w2d: torch.Tensor, stats: SiteStats | None = None) -> torch.Tensor:
        if self.outliers and not self.is_identity:
            return self._with_outliers(w2d, stats)
        return self._own(w2d, stats)

    def _own(self, w2d: torch.Tensor, stats: SiteStats | None) -> torch.Tensor:
        if not self.needs_calibration:
            return self._fake_quantize(w2d)
        if stats is None:
            raise UserError(
                f"{self.name} needs calibration data", "pass --calibration eng (or mix:..., target, a file)"
            )
        return self._calibrated(w2d, stats)

    def _calibrated(self, w2d: torch.Tensor, stats: SiteStats) -> torch.Tensor:
        """A calibrated kind's transform of a 2-D ``[out, in]`` weight given its input's statistics."""
        raise NotImplementedError

    def _with_outliers(self, w2d: torch.Tensor, stats: SiteStats | None = None) -> torch.Tensor:
        k = n_outliers(w2d.numel(), self.outliers)
        flat = w2d.reshape(-1)
        idx = torch.topk(flat.abs(), k, sorted=False).indices if k else flat.new_zeros(0, dtype=torch.long)
        rest = w2d if self.outliers_in_scale else flat.clone().index_fill_(0, idx, 0).reshape(w2d.shape)
        out = self._own(rest, stats).reshape(-1)
        out[idx] = flat[idx].to(torch.float16).to(w2d.dtype)
        return out.reshape(w2d.shape)

    @abstractmethod
    def _fake_quantize(self, w2d: torch.Tensor) -> torch.Tensor:
        """The kind's own transform of a 2-D ``[out, in]`` weight (a new tensor of the same dtype)."""

    def check_shape(self, shape: tuple[int, int], where: str) -> None:
        """Raise a :class:`UserError` when the scheme cannot quantize a ``[out, in]`` tensor: kept rows or
        columns outside it, or a (remaining) shape the kind cannot quantize."""
        for r, c in self.keep_points + self.zero_points:
            if not (0 <= r < shape[0] and 0 <= c < shape[1]):
                raise UserError(
                    f"{where}: element ({r}, {c}) is out of range (the tensor is [{shape[0]}, {shape[1]}])",
                    "kept or zeroed elements must lie inside the tensor",
                )
        if self.partial:
            for axis, ranges in (("row", self.keep_rows), ("column", self.keep_cols)):
                n = shape[0] if axis == "row" else shape[1]
                if ranges and ranges[-1][1] > n:
                    raise UserError(
                        f"{where}: kept {axis} {ranges[-1][1] - 1} is out of range (the tensor has {n} {axis}s)",
                        "kept rows and columns must lie inside the tensor",
                    )
            rows, cols = self._rest(shape)
            if not rows or not cols:
                return
            shape = (len(rows), len(cols))
            where = f"{where} (the [{shape[0]}, {shape[1]}] left after its kept rows and columns)"
        self._check_shape(shape, where)

    def _check_shape(self, shape: tuple[int, int], where: str) -> None:
        """The kind's own check of a ``[out, in]`` shape (default: any can be quantized)."""

    # -- cost ----------------------------------------------------------------------------------
    def storage_bits(self, shape: tuple[int, int], orig_bits: int) -> float:
        """Bits needed to store a ``[out, in]`` tensor in this scheme: scales, zero points, for kept
        outliers a float16 value plus an int32 index each (a COO sparse part), and for kept rows and columns
        their elements at ``orig_bits`` plus the compact remaining matrix in the scheme; a kept point outside
        them ``orig_bits`` plus a 32-bit index, a zeroed point a 32-bit index."""
        points = 0.0
        if not self.is_identity:
            points = len(self._own_points(self.keep_points)) * (orig_bits + 32) + len(self.zero_points) * 32
        return points + self._ranges_bits(shape, orig_bits)

    def _ranges_bits(self, shape: tuple[int, int], orig_bits: int) -> float:
        if self.partial and not self.is_identity:
            rows, cols = self._rest(shape)
            kept = self._kept_by_ranges(shape)
            rest = (len(rows), len(cols))
            return kept * orig_bits + (self._whole_bits(rest, orig_bits) if rows and cols else 0.0)
        return self._whole_bits(shape, orig_bits)

    def _whole_bits(self, shape: tuple[int, int], orig_bits: int) -> float:
        extra = 0.0
        if self.outliers and not self.is_identity:
            extra = n_outliers(shape[0] * shape[1], self.outliers) * (16 + 32)
        return extra + self._storage_bits(shape, orig_bits)

    @abstractmethod
    def _storage_bits(self, shape: tuple[int, int], orig_bits: int) -> float:
        """Bits of the kind's own storage of a ``[out, in]`` tensor whose weights have ``orig_bits`` each."""


def to_ranges(indices: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Sorted indices as disjoint half-open ranges: {0, 1, 2, 5} -> ((0, 3), (5, 6))."""
    out: list[list[int]] = []
    for i in sorted(set(indices)):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return tuple((a, b) for a, b in out)


def range_indices(ranges: Iterable[tuple[int, int]]) -> Iterator[int]:
    for a, b in ranges:
        yield from range(a, b)


def format_ranges(ranges: Iterable[tuple[int, int]]) -> str:
    """((0, 3), (5, 6)) -> "0-2.5" (inclusive ranges joined by dots: names stay free of commas and semicolons)."""
    return ".".join(f"{a}" if b == a + 1 else f"{a}-{b - 1}" for a, b in ranges)


def format_points(points: Iterable[tuple[int, int]]) -> str:
    """((507, 1229), (3, 9)) -> "507x1229.3x9" (no commas or semicolons, like :func:`format_ranges`)."""
    return ".".join(f"{r}x{c}" for r, c in points)


def parse_points(text: str) -> tuple[tuple[int, int], ...] | None:
    """Inverse of :func:`format_points`; None when ``text`` is not written that way."""
    out = []
    for part in text.split("."):
        m = re.fullmatch(r"(\d+)x(\d+)", part)
        if not m:
            return None
        out.append((int(m.group(1)), int(m.group(2))))
    return tuple(sorted(set(out)))


def parse_ranges(text: str) -> tuple[tuple[int, int], ...] | None:
    """Inverse of :func:`format_ranges`; None when ``text`` is not written that way."""
    out: list[int] = []
    for part in text.split("."):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            return None
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            return None
        out.extend(range(a, b + 1))
    return to_ranges(out)


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


class MissingExtra(UserError):
    """A scheme kind whose library (an optional extra) is not installed."""


def require_extra(module: str, extra: str, what: str) -> None:
    """Raise :class:`MissingExtra` (one line with the install command) when ``module`` cannot be imported."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        found = False
    if not found:
        raise MissingExtra(
            f"{what} need the {module} library, which is not installed", f"run pip install 'quant-disparity[{extra}]'"
        )
