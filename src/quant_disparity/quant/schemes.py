"""Quantization schemes by name: the registry of scheme kinds, and the names' grammar.

A scheme name is written in one kind's syntax (case-insensitive); ``quant-disparity schemes`` lists the kinds
with examples and bit costs. Built-in kinds (one module each under :mod:`.backends`): round-to-nearest
(``w4g128``, ``w4g128-asym``, ``w8-channel``, ``w4-tensor``), llama.cpp's legacy types (``gguf:q4_0`` ...),
its K-types and recipes by its own code (``gguf:q4_k``, ``gguf:q4_k_m``), calibrated GPTQ and AWQ
(``gptq:w4g128``, ``awq:w4g128``: they need calibration statistics, :mod:`.calibration`), HQQ and
optimum-quanto through their libraries (``hqq:w4g64``, ``quanto:w4``; optional extras), 16-bit casts
(``fp16``, ``bf16``) and ``none``. Any quantizing scheme takes ``+outliers:1%``: it keeps the 1 %
largest-magnitude weights of each tensor in float16 (the scale computed on the rest; ``+outliers-inscale:``
lets them set it). Third-party kinds come from ``quant_disparity.schemes`` entry points.
"""

from __future__ import annotations

import dataclasses
import re

from ..errors import UserError, did_you_mean
from ..registry import Registry
from .backends import awq, cast, gguf, gptq, hqq, identity, kquant, quanto, rtn
from .backends.base import Scheme, SchemeKind, n_outliers, parse_points, parse_ranges, range_indices

__all__ = [
    "GGUF_TYPES",
    "NONE",
    "SCHEMES",
    "Scheme",
    "SchemeKind",
    "n_outliers",
    "parse_outlier_fraction",
    "parse_scheme",
    "scheme_help",
]

GGUF_TYPES = gguf.TYPES
NONE = identity.NONE
_OUTLIER_RE = re.compile(r"^(.*)\+outliers(-inscale)?:([0-9.]+)%$")
_KEEP_RE = re.compile(r"^(.*)\+keep-(rows|cols):([0-9.-]+)$")
_POINTS_RE = re.compile(r"^(.*)\+(keep|zero)-at:([0-9x.]+)$")
_CALIBRATION_RE = re.compile(r"^(.*)@(cal-[0-9a-f]+)$")


def scheme_help(registry: Registry[SchemeKind] | None = None) -> str:
    kinds = (registry or SCHEMES).values()
    return f"schemes: {'; '.join(k.syntax for k in kinds)}; any quantizing one +outliers:P%"


SCHEMES: Registry[SchemeKind] = Registry("scheme kind", SchemeKind, group="quant_disparity.schemes", hint=scheme_help)
for _kind in (rtn.KIND, gguf.KIND, kquant.KIND, gptq.KIND, awq.KIND, cast.KIND, identity.KIND, identity.REFERENCE_KIND):
    SCHEMES.register(_kind)
for _kind in (hqq.KIND, quanto.KIND):  # real quantizers' libraries (optional extras; checked when a name is parsed)
    SCHEMES.register(_kind)


def parse_outlier_fraction(text: str, where: str) -> float:
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)%", text.strip())
    if not m or not 0 < float(m.group(1)) < 100:
        raise UserError(f"{where}: outlier share must be a percentage in (0, 100), got {text!r}", "e.g. 0.5%")
    return float(m.group(1)) / 100


def parse_scheme(text: str) -> Scheme:
    """Parse a scheme name: the first registered kind whose syntax it is in makes it; raises
    :class:`UserError` with the grammar otherwise."""
    raw = text.strip().lower()
    pts = _POINTS_RE.match(raw)
    if pts:  # kept or zeroed single elements (written by plans' super selector), outermost in the name
        points = parse_points(pts.group(3))
        base = parse_scheme(pts.group(1))
        if points is None or base.is_identity:
            raise UserError(f"scheme {text!r}: bad kept or zeroed elements", "write e.g. w4g128+keep-at:507x1229")
        return base.with_points(keep=points) if pts.group(2) == "keep" else base.with_points(zero=points)
    k = _KEEP_RE.match(raw)
    if k:  # kept rows / columns (written by plans' head and neuron selectors), outermost in the name
        ranges = parse_ranges(k.group(3))
        base = parse_scheme(k.group(1))
        if ranges is None or base.is_identity:
            raise UserError(f"scheme {text!r}: bad kept rows or columns", "write e.g. w4g128+keep-rows:0-15.32-47")
        idx = list(range_indices(ranges))
        return base.with_kept(rows=idx) if k.group(2) == "rows" else base.with_kept(cols=idx)
    m = _OUTLIER_RE.match(raw)
    if m:
        base = parse_scheme(m.group(1))
        if base.is_identity:
            raise UserError(f"scheme {text!r}: outliers need a quantizing scheme", scheme_help())
        return base.with_outliers(parse_outlier_fraction(m.group(3) + "%", f"scheme {text!r}"), bool(m.group(2)))
    c = _CALIBRATION_RE.match(raw)
    if c:  # the calibration a calibrated scheme is bound to (set by the audit and the experiment planner)
        base = parse_scheme(c.group(1))
        if not base.needs_calibration:
            raise UserError(f"scheme {text!r}: {base.name} takes no calibration", scheme_help())
        return dataclasses.replace(base, calibration=c.group(2))
    for kind in SCHEMES.values():
        try:
            scheme = kind.parse(raw)
        except UserError as e:
            raise type(e)(f"scheme {text!r}: {e.message}", e.hint) from None
        if scheme is not None:
            return scheme
    examples = [name for kind in SCHEMES.values() for name, _ in kind.examples]
    raise UserError(f"unknown scheme {text!r}{did_you_mean(raw, examples)}", scheme_help())
