"""Weight statistics per attention head: the rows of one projection (``attn.v`` by default) that belong to
each key/value head (each query head for ``attn.q``), per block, in float64. For the log's claim that one
layer's V weights are several times larger than the others' (its Exp-054)."""

from __future__ import annotations

import math

import torch

from ..errors import UserError
from ..models.modules import ModuleMap, weight_2d


def head_weight_stats(model: torch.nn.Module, modmap: ModuleMap, component: str = "attn.v") -> list[dict]:
    """Per block: the projection's root mean square, mean and largest ``|w|``, and the same per head (rows of
    the ``[out, in]`` view that belong to it; key/value heads for k and v, query heads for q)."""
    if component not in ("attn.q", "attn.k", "attn.v"):
        raise UserError(f"head statistics need attn.q, attn.k or attn.v, not {component!r}")
    layout = modmap.attention
    if layout is None:
        raise UserError(f"the attention heads of this model cannot be separated ({modmap.attention_note})")
    n = layout.n_heads if component == "attn.q" else layout.n_kv_heads
    out = []
    for p in modmap.params:
        if p.role != "matrix" or p.layer is None or p.component != component:
            continue
        w = weight_2d(model.get_parameter(p.name).data, p).detach().double()

        def stats(x: torch.Tensor) -> dict:
            a = x.abs()
            return {
                "rms": math.sqrt(float((x * x).mean())),
                "mean_abs": float(a.mean()),
                "max_abs": float(a.max()),
            }

        heads = []
        for h in range(n):
            q, kv = ({h}, set()) if component == "attn.q" else (set(), {h})
            rows = layout.rows(component, q, kv)
            heads.append(stats(w[rows]))
        out.append({"layer": p.layer, "tensor": p.name, **stats(w), "heads": heads})
    if not out:
        raise UserError(f"no separate {component} projection found (a fused qkv layout is not covered here)")
    return sorted(out, key=lambda r: r["layer"])
