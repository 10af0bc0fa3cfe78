"""AWQ (Lin et al., 2023): activation-aware per-input-channel scales, then round-to-nearest.

``awq:w4g128`` 4 bits, groups of 128 inputs, symmetric; ``-asym`` an integer zero point per group (AutoAWQ's
default format); ``-clip`` adds AutoAWQ's clipping search. ``awq:w4-channel`` is one group per row.

The scale search follows AutoAWQ's ``_search_best_scale``: for alpha in 0, 1/20, ..., 19/20 the input channels
are scaled by ``s = mean|x|^alpha`` (clamped at 1e-4, normalized by ``sqrt(max s · min s)``), the weight is
quantized as ``Q(W·s)/s`` and the alpha with the smallest output error ``mean((X Wᵀ − X Q(W·s)/sᵀ)²)`` over the
calibration input rows wins. Here the search is **per tensor** on the tensor's own output (AutoAWQ shares one
scale between the tensors that read the same input, e.g. q/k/v, and scores the block's output). In fake
quantization the folded scale is exact either way; a per-tensor scale cannot be folded into a shared norm, so
its ``in`` float16 values are counted in the bits. alpha = 0 is plain RTN. ``-clip`` then searches, per
output row and group, a clipping ratio 1, 0.95, ..., 0.55 of the group's range with the smallest error of the
group's own partial output (AutoAWQ's ``_compute_best_clip``). The grid is this project's RTN grid (:mod:`..rtn`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ...errors import UserError
from .. import rtn
from ..site_stats import SiteStats
from .base import Scheme, SchemeKind
from .gptq import check_bits_group

N_GRID = 20
CLIP_STEPS = 10  # ratios 1 - i/20 for i < 10 (AutoAWQ: max_shrink 0.5, n_grid 20)
_SYNTAX = re.compile(r"^awq:w(\d+)(?:g(\d+)|-channel)((?:-asym|-sym|-clip)*)$")


def awq_scales(mean_abs: torch.Tensor, alpha: float) -> torch.Tensor:
    s = mean_abs.double().pow(alpha).clamp(min=1e-4)
    return s / torch.sqrt(s.max() * s.min())


def awq(
    w: torch.Tensor,
    mean_abs: torch.Tensor,
    x: torch.Tensor,
    quantize,
    *,
    n_grid: int = N_GRID,
) -> tuple[torch.Tensor, float]:
    """The best ``Q(W·s)/s`` of ``w [out, in]`` over the alpha grid (float64) and its alpha. ``quantize`` is the
    RTN fake-quantizer of a float64 ``[out, in]`` matrix, ``x [n, in]`` the calibration input rows."""
    W = w.detach().double()
    X = x.detach().double().to(W.device)
    ref = X @ W.t()
    best, best_err, best_alpha = W, float("inf"), 0.0
    for i in range(n_grid):
        alpha = i / n_grid
        s = awq_scales(mean_abs.to(W.device), alpha)
        q = quantize(W * s) / s
        err = float(((ref - X @ q.t()) ** 2).mean()) if X.shape[0] else 0.0
        if err < best_err:
            best, best_err, best_alpha = q, err, alpha
    return best, best_alpha


def clip_search(
    w: torch.Tensor, x: torch.Tensor, bits: int, group_size: int | None, symmetric: bool, steps: int = CLIP_STEPS
) -> torch.Tensor:
    """Per (row, group), the clipping ratio of the group's range whose quantized group changes the group's own
    partial output ``x_g · w_g`` least; returns the RTN of the weight clipped at the chosen ratios (float64)."""
    W = w.detach().double()
    X = x.detach().double().to(W.device)
    g = W.shape[1] if group_size is None else min(group_size, W.shape[1])
    pad = -W.shape[1] % g
    Wg = torch.nn.functional.pad(W, (0, pad)).reshape(W.shape[0], -1, g)  # [out, G, g]
    Xg = torch.nn.functional.pad(X, (0, pad)).reshape(X.shape[0], -1, g)  # [n, G, g]
    hi = Wg.amax(-1, keepdim=True).clamp(min=0)
    lo = Wg.amin(-1, keepdim=True).clamp(max=0)
    if symmetric:
        hi = torch.maximum(hi, -lo)
        lo = -hi
    best = torch.full(Wg.shape[:2], float("inf"), dtype=torch.float64, device=W.device)
    out = Wg.clone()
    for i in range(steps):
        r = 1 - i / (2 * steps)
        c = torch.maximum(torch.minimum(Wg, hi * r), lo * r)
        q = rtn.fake_quantize(c.reshape(W.shape[0], -1), bits, group_size=g, symmetric=symmetric).reshape(Wg.shape)
        err = (torch.einsum("ngk,ogk->nog", Xg, Wg - q) ** 2).mean(0) if X.shape[0] else torch.zeros_like(best)
        better = err < best
        best = torch.where(better, err, best)
        out = torch.where(better[..., None], q, out)
    return out.reshape(W.shape[0], -1)[:, : W.shape[1]]


@dataclass(frozen=True)
class AWQ(Scheme):
    needs_calibration = True
    bits: int
    group_size: int | None = 128
    symmetric: bool = True
    clip: bool = False

    @property
    def base_name(self) -> str:
        name = f"awq:w{self.bits}{'-channel' if self.group_size is None else f'g{self.group_size}'}"
        return name + ("" if self.symmetric else "-asym") + ("-clip" if self.clip else "")

    def _fake_quantize(self, w2d: torch.Tensor) -> torch.Tensor:
        raise UserError(f"{self.name} needs calibration data", "pass --calibration eng (or mix:..., target, a file)")

    def _rtn(self, w: torch.Tensor) -> torch.Tensor:
        return rtn.fake_quantize(w, self.bits, group_size=self.group_size, symmetric=self.symmetric)

    def _calibrated(self, w2d: torch.Tensor, stats: SiteStats) -> torch.Tensor:
        q, alpha = awq(w2d, stats.mean_abs, stats.rows, self._rtn)
        if self.clip:
            s = awq_scales(stats.mean_abs.to(w2d.device), alpha)
            q = clip_search(w2d.double() * s, stats.rows / s.to(stats.rows.device), self.bits, self.group_size,
                            self.symmetric) / s  # fmt: skip
        return q.to(dtype=w2d.dtype, device=w2d.device)

    def _storage_bits(self, shape: tuple[int, int], orig_bits: int) -> float:
        scale_vector = 16 * shape[1]  # per tensor, not folded into a shared norm
        return rtn.storage_bits(shape, self.bits, self.group_size, False, self.symmetric) + scale_vector


def _parse(text: str) -> AWQ | None:
    m = _SYNTAX.match(text)
    if not m:
        return None
    bits, group = int(m.group(1)), int(m.group(2)) if m.group(2) else None
    check_bits_group(bits, group, KIND.syntax)
    opts = m.group(3)
    return AWQ(bits=bits, group_size=group, symmetric="-asym" not in opts, clip="-clip" in opts)


KIND = SchemeKind(
    name="awq",
    syntax="awq:wBgG or awq:wB-channel, B bits 2-8, options -asym -clip (needs --calibration)",
    examples=(
        ("awq:w4g128", "AWQ 4-bit, groups of 128: activation-aware scale search, then RTN (calibrated)"),
        ("awq:w4g128-asym-clip", "with zero points and the clipping search"),
    ),
    parse=_parse,
    colon_name=r"awq:[a-z0-9.-]+",
)
