"""Golden outputs of llm-compressor's GPTQ core for tests/test_gptq.py (tests/golden/gptq_llmcompressor.npz).

llm-compressor 0.14 downgrades transformers, so it runs in a throw-away environment, never in the project's:

    python -m venv /tmp/venv-llmc && /tmp/venv-llmc/bin/pip install llmcompressor==0.14.0.1
    /tmp/venv-llmc/bin/python scripts/golden_gptq.py tests/golden/gptq_llmcompressor.npz

For a few small random weights ``W`` and fixed Hessians ``H = 2/n XᵀX`` (inputs with per-channel scales, so the
Hessian is far from the identity), it calls ``llmcompressor.modifiers.gptq.gptq_quantize.quantize_weight`` with
a given grid per group (scale and zero point, computed here the way this project's RTN does: see
``quant_disparity.quant.rtn``; symmetric cases use the library's own code range -2^(b-1)..2^(b-1)-1, one code
more than ours) and saves its dequantized output. The library's working precision is set to
float64 (its module constant ``GPTQ_PRECISION``) so that the comparison is not limited by float32 rounding.
Only numpy, torch and llm-compressor are used: the project is not imported here.
"""

from __future__ import annotations

import sys

import llmcompressor.modifiers.gptq.gptq_quantize as gq
import llmcompressor.modifiers.gptq.helpers as gh
import numpy as np
import torch
from compressed_tensors.quantization import QuantizationArgs

#: (name, rows, cols, bits, group, symmetric, actorder, damp, samples)
CASES = (
    ("asym4_g16", 24, 64, 4, 16, False, False, 0.01, 200),
    ("asym3_g32_actorder", 20, 96, 3, 32, False, True, 0.01, 300),
    ("asym4_channel_damp", 16, 48, 4, None, False, False, 0.1, 40),
    ("sym4_g16", 24, 64, 4, 16, True, False, 0.01, 200),
    ("asym2_g8_actorder", 12, 40, 2, 8, False, True, 0.05, 100),
)


def rtn_grid(w: torch.Tensor, bits: int, group: int | None, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """This project's RTN grid per group (float16 scale rounded up; integer zero point), [rows, n_groups]."""
    rows, cols = w.shape
    g = cols if group is None else group
    x = w.float().reshape(rows, cols // g, g)
    if symmetric:
        scale = x.abs().amax(-1) / (2 ** (bits - 1) - 1)
    else:
        lo = x.amin(-1).clamp(max=0)
        hi = x.amax(-1).clamp(min=0)
        scale = (hi - lo) / (2**bits - 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).clamp(min=2.0**-24)
    s16 = scale.half()
    s16 = torch.where(s16.float() < scale, (s16.view(torch.int16) + 1).view(torch.float16), s16)
    if symmetric:
        return s16.double(), torch.zeros_like(s16, dtype=torch.float64)
    zero = torch.round(-lo / s16.float()).clamp(0, 2**bits - 1)
    return s16.double(), zero.double()


def main(out: str) -> None:
    gq.GPTQ_PRECISION = gh.GPTQ_PRECISION = torch.float64
    gen = torch.Generator().manual_seed(0)
    arrays: dict[str, np.ndarray] = {}
    for name, rows, cols, bits, group, sym, actorder, damp, n in CASES:
        w = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
        x = torch.randn(n, cols, generator=gen, dtype=torch.float64) * torch.rand(cols, generator=gen).double() * 3
        h = 2.0 / n * x.T @ x
        scale, zero = rtn_grid(w, bits, group, sym)
        args = QuantizationArgs(
            num_bits=bits,
            type="int",
            symmetric=sym,
            strategy="group" if group else "channel",
            group_size=group,
            actorder="weight" if actorder else None,
        )
        # compressed-tensors' int grid is signed (-2^(b-1) .. 2^(b-1)-1) also when asymmetric: our unsigned
        # codes 0 .. 2^b-1 with zero point z are its codes shifted by 2^(b-1), with zero point z - 2^(b-1)
        their_zero = zero - (0 if sym else 2 ** (bits - 1))
        q, _loss, _fallback = gq.quantize_weight(
            w[None].clone(),
            h[None].clone(),
            scale[None].to(torch.float64),
            their_zero[None].to(torch.float64),
            None,
            args,
            blocksize=128,
            percdamp=damp,
        )
        for key, value in (("w", w), ("h", h), ("scale", scale), ("zero", zero), ("q", q[0])):
            arrays[f"{name}/{key}"] = value.numpy()
        arrays[f"{name}/meta"] = np.array([bits, group or 0, int(sym), int(actorder), damp])
        print(name, "max |GPTQ - W|:", float((q[0] - w).abs().max()))
    np.savez_compressed(out, **arrays)
    print("wrote", out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/golden/gptq_llmcompressor.npz")
