"""GPTQ (Frantar et al., 2022): column-by-column quantization that moves each column's error onto the columns not
yet quantized, weighted by the inverse Hessian of the layer's calibration inputs.

``gptq:w4g128`` 4 bits, groups of 128 inputs, symmetric; options in any order after the granularity:
``-asym`` (integer zero point per group), ``-actorder`` (columns processed in order of decreasing Hessian
diagonal; the groups stay the consecutive inputs of the original order, as llm-compressor's
``actorder="weight"``, so the ``g_idx`` is ``j // G`` and costs no storage), ``-dampD`` (damping, a fraction of the mean Hessian diagonal added to it;
default 0.01). ``gptq:w4-channel`` is one group per row.

Implemented in the quant core, in float64, following GPTQ's reference algorithm as llm-compressor 0.14 runs it
(``quantize_weight``: dead inputs zeroed, Cholesky of the damped inverse, blocks of 128 columns, lazy batch
updates, each group's scale and zero point fixed up front from the original weights, as its observer does;
GPTQ's first reference code computed them from the weights as updated when the group's first column is reached). The grid is this project's RTN grid (:mod:`..rtn`: symmetric ``±(2^(b-1)-1)``, float16 scales rounded up),
so with an identity Hessian GPTQ gives exactly ``wBgG``. A row length that is not a multiple of the group ends
with a shorter group, as our RTN does; GPTQ libraries usually refuse such a shape. Tested against
llm-compressor's own ``quantize_weight`` (tests/golden/gptq_llmcompressor.npz, scripts/golden_gptq.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ...errors import UserError
from .. import rtn
from ..site_stats import SiteStats
from .base import Scheme, SchemeKind

DEFAULT_DAMP = 0.01
BLOCK = 128  # columns per lazy-update block (the result does not depend on it beyond rounding)
_SYNTAX = re.compile(r"^gptq:w(\d+)(?:g(\d+)|-channel)((?:-asym|-sym|-actorder|-damp[0-9.]+)*)$")
_OPT = re.compile(r"-(asym|sym|actorder|damp[0-9.]+)")


def grid(bits: int, symmetric: bool) -> tuple[int, int]:
    """Smallest and largest code of the RTN grid (:mod:`..rtn`)."""
    return (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)


def group_params(
    w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point ``[rows, n_groups]`` (float64; zero 0 when symmetric) of ``w [out, in]`` on the RTN
    grid, groups of ``group_size`` consecutive inputs (a shorter last one)."""
    x = rtn._grouped(w.float(), group_size, False)
    scale, zero = rtn._params(x, bits, symmetric)
    z = torch.zeros_like(scale, dtype=torch.float64) if zero is None else zero.double()
    return scale.double()[..., 0], z[..., 0]


def gptq(
    w: torch.Tensor,
    hessian: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    lo: int,
    hi: int,
    *,
    group_size: int | None = 128,
    act_order: bool = False,
    damp: float = DEFAULT_DAMP,
    block: int = BLOCK,
) -> torch.Tensor:
    """GPTQ of ``w [out, in]`` given ``hessian [in, in]`` and each group's grid (``scale``, ``zero``:
    ``[out, n_groups]``, codes ``lo..hi``, group of input ``j``: ``j // group_size``): the dequantized weight
    (float64). As llm-compressor 0.14's ``quantize_weight``: the grids are fixed before the columns are
    updated (computed from the original weights), act-order permutes the columns but not the groups."""
    W = w.detach().double().clone()
    H = hessian.detach().double().clone().to(W.device)
    cols = W.shape[1]
    g = cols if group_size is None else group_size
    gid = torch.arange(cols, device=W.device) // g
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else None
    if perm is not None:
        W, H, gid = W[:, perm], H[perm][:, perm], gid[perm]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H[range(cols), range(cols)] += damp * torch.mean(torch.diag(H))
    try:
        L = torch.linalg.cholesky(H)
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    except torch.linalg.LinAlgError:
        raise UserError(
            "GPTQ: the calibration Hessian is not positive definite", "raise the damping, e.g. -damp0.1"
        ) from None
    S = scale.double().to(W.device)[:, gid]  # [out, in]: each column's grid, in the working order
    Z = zero.double().to(W.device)[:, gid]
    threads = torch.get_num_threads()
    # The column loop is thousands of small operations: on one thread they run ~25x faster on a loaded CPU
    # than on a pool that has to be woken for each (measured: 2 s vs 49 s for a [640, 1024] weight, 2 cores).
    torch.set_num_threads(1)
    try:
        Q = _columns(W, Hinv, S, Z, lo, hi, block)
    finally:
        torch.set_num_threads(threads)
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return Q


def _columns(
    W: torch.Tensor, Hinv: torch.Tensor, S: torch.Tensor, Z: torch.Tensor, lo: int, hi: int, block: int
) -> torch.Tensor:
    """GPTQ's loop over columns in blocks (lazy batch updates); ``W`` is updated in place."""
    cols = W.shape[1]
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            wcol, s, z = W1[:, i], S[:, i1 + i], Z[:, i1 + i]
            q = (torch.clamp(torch.round(wcol / s) + z, lo, hi) - z) * s
            Q[:, i1 + i] = q
            err = (wcol - q) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return Q


@dataclass(frozen=True)
class GPTQ(Scheme):
    needs_calibration = True
    bits: int
    group_size: int | None = 128  # None: one group per row
    symmetric: bool = True
    act_order: bool = False
    damp: float = DEFAULT_DAMP

    @property
    def base_name(self) -> str:
        name = f"gptq:w{self.bits}{'-channel' if self.group_size is None else f'g{self.group_size}'}"
        name += "" if self.symmetric else "-asym"
        name += "-actorder" if self.act_order else ""
        return name + ("" if self.damp == DEFAULT_DAMP else f"-damp{self.damp:g}")

    def _fake_quantize(self, w2d: torch.Tensor) -> torch.Tensor:
        raise UserError(f"{self.name} needs calibration data", "pass --calibration eng (or mix:..., target, a file)")

    def _calibrated(self, w2d: torch.Tensor, stats: SiteStats) -> torch.Tensor:
        scale, zero = group_params(w2d, self.bits, self.group_size, self.symmetric)
        q = gptq(
            w2d,
            stats.hessian,
            scale,
            zero,
            *grid(self.bits, self.symmetric),
            group_size=self.group_size,
            act_order=self.act_order,
            damp=self.damp,
        )
        return q.to(dtype=w2d.dtype, device=w2d.device)

    def _storage_bits(self, shape: tuple[int, int], orig_bits: int) -> float:
        return rtn.storage_bits(shape, self.bits, self.group_size, False, self.symmetric)


def parse_options(text: str) -> dict[str, str]:
    """``-asym-actorder-damp0.1`` -> {"asym": "", "actorder": "", "damp": "0.1"}."""
    out: dict[str, str] = {}
    for m in _OPT.finditer(text):
        opt = m.group(1)
        key = "damp" if opt.startswith("damp") else opt
        out[key] = opt[4:] if key == "damp" else ""
    return out


def check_bits_group(bits: int, group: int | None, syntax: str) -> None:
    if not 2 <= bits <= 8:
        raise UserError(f"bits must be 2-8, got {bits}", f"write {syntax}")
    if group is not None and not 1 <= group <= rtn.MAX_GROUP_SIZE:
        raise UserError(f"group size must be 1..{rtn.MAX_GROUP_SIZE}, got {group}", f"write {syntax}")


def _parse(text: str) -> GPTQ | None:
    m = _SYNTAX.match(text)
    if not m:
        return None
    bits, group = int(m.group(1)), int(m.group(2)) if m.group(2) else None
    check_bits_group(bits, group, KIND.syntax)
    opts = parse_options(m.group(3))
    try:
        damp = float(opts.get("damp", DEFAULT_DAMP))
    except ValueError:
        raise UserError(f"bad damping {opts['damp']!r}", "e.g. gptq:w4g128-damp0.01") from None
    if not 0 < damp <= 1:
        raise UserError(f"damping must be in (0, 1], got {damp:g}", "e.g. gptq:w4g128-damp0.01")
    return GPTQ(bits=bits, group_size=group, symmetric="asym" not in opts, act_order="actorder" in opts, damp=damp)


KIND = SchemeKind(
    name="gptq",
    syntax="gptq:wBgG or gptq:wB-channel, B bits 2-8, options -asym -actorder -dampD (needs --calibration)",
    examples=(
        ("gptq:w4g128", "GPTQ 4-bit, groups of 128, symmetric (calibrated)"),
        ("gptq:w4g128-asym-actorder", "with zero points and activation order (g_idx stored)"),
        ("gptq:w3g128-damp0.1", "3-bit, damping 0.1 of the mean Hessian diagonal"),
    ),
    parse=_parse,
    colon_name=r"gptq:[a-z0-9.-]+",
)
