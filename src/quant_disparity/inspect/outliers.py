"""Dense or sparse outliers: per weight tensor, how heavy its tails are.

For each weight matrix (every Linear weight in the blocks, the embeddings and the LM head), in float64 over all
its elements, with the population mean ``m`` and standard deviation ``s``:

- ``share_beyond_3sd``, ``share_beyond_6sd``: the fraction of weights with ``|w - m| > k s`` (a Gaussian has
  0.27 % beyond 3 s and 2.0e-9 beyond 6 s, i.e. none in any tensor here);
- ``kurtosis``: excess kurtosis ``E[(w - m)^4] / s^4 - 3`` (0 for a Gaussian; large when a few weights sit far out);
- ``max_over_mean_abs``: ``max |w| / mean |w|`` (about 6 for a Gaussian of a million weights: ``sqrt(2 ln n)``
  standard deviations over ``sqrt(2/pi)``).

*Dense* outliers show as a share beyond 3 s well above 0.27 % with moderate kurtosis; *sparse* ones (a handful of
super weights) as weights beyond 6 s with a huge kurtosis and ``max / mean``, the share beyond 3 s barely moved.
The numbers are given for every tensor; the reader decides which the model has.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..models.modules import ModuleMap, weight_2d

#: What a Gaussian tensor gives, for comparison.
GAUSSIAN = {
    "share_beyond_3sd": math.erfc(3 / math.sqrt(2)),
    "share_beyond_6sd": math.erfc(6 / math.sqrt(2)),
    "kurtosis": 0.0,
}

#: Elements per chunk of the two float64 passes (bounds the memory for a 168 M-weight embedding).
CHUNK = 1 << 22


@dataclass(frozen=True)
class TensorOutliers:
    name: str
    layer: int | None
    components: tuple[str, ...]
    numel: int
    mean: float
    std: float
    share_beyond_3sd: float
    share_beyond_6sd: float
    n_beyond_6sd: int
    kurtosis: float | None  # None for a constant tensor
    max_abs: float
    mean_abs: float
    max_over_mean_abs: float | None  # None for an all-zero tensor

    def to_dict(self) -> dict:
        d = asdict(self)
        d["components"] = list(self.components)
        return d


def outlier_stats(w: torch.Tensor) -> dict:
    """Tail statistics of all elements of ``w`` (any shape), in float64, in chunks (two passes)."""
    flat = w.detach().reshape(-1)
    n = flat.numel()
    if n == 0:
        raise ValueError("empty tensor")
    total = total_abs = 0.0
    max_abs = 0.0
    for i in range(0, n, CHUNK):
        c = flat[i : i + CHUNK].double()
        total += float(c.sum())
        a = c.abs()
        total_abs += float(a.sum())
        max_abs = max(max_abs, float(a.max()))
    mean = total / n
    m2 = m4 = 0.0
    for i in range(0, n, CHUNK):
        d = flat[i : i + CHUNK].double() - mean
        d2 = d * d
        m2 += float(d2.sum())
        m4 += float((d2 * d2).sum())
    var = m2 / n
    std = math.sqrt(var)
    n3 = n6 = 0
    for i in range(0, n, CHUNK):
        d = (flat[i : i + CHUNK].double() - mean).abs()
        n3 += int((d > 3 * std).sum())
        n6 += int((d > 6 * std).sum())
    mean_abs = total_abs / n
    return {
        "numel": n,
        "mean": mean,
        "std": std,
        "share_beyond_3sd": n3 / n,
        "share_beyond_6sd": n6 / n,
        "n_beyond_6sd": n6,
        "kurtosis": (m4 / n) / var**2 - 3 if var > 0 else None,
        "max_abs": max_abs,
        "mean_abs": mean_abs,
        "max_over_mean_abs": max_abs / mean_abs if mean_abs > 0 else None,
    }


def tensor_outliers(model: torch.nn.Module, modmap: ModuleMap) -> list[TensorOutliers]:
    """:func:`outlier_stats` of every weight matrix and embedding of ``model`` (tied tensors once)."""
    out = []
    for p in modmap.params:
        if p.role not in ("matrix", "embedding"):
            continue
        s = outlier_stats(weight_2d(model.get_parameter(p.name).data, p))
        out.append(TensorOutliers(name=p.name, layer=p.layer, components=p.components, **s))
    return out


def outliers_summary(rows: list[TensorOutliers]) -> dict:
    """Across tensors: how many have any weight beyond 6 sd, and the median and largest of each statistic."""

    def med(vals: list[float]) -> float | None:
        vals = sorted(vals)
        if not vals:
            return None
        k = len(vals) // 2
        return vals[k] if len(vals) % 2 else (vals[k - 1] + vals[k]) / 2

    kurt = [r.kurtosis for r in rows if r.kurtosis is not None]
    ratio = [r.max_over_mean_abs for r in rows if r.max_over_mean_abs is not None]
    return {
        "tensors": len(rows),
        "tensors_with_weights_beyond_6sd": sum(1 for r in rows if r.n_beyond_6sd),
        "weights_beyond_6sd": sum(r.n_beyond_6sd for r in rows),
        "median_share_beyond_3sd": med([r.share_beyond_3sd for r in rows]),
        "max_share_beyond_3sd": max((r.share_beyond_3sd for r in rows), default=None),
        "median_kurtosis": med(kurt),
        "max_kurtosis": max(kurt, default=None),
        "median_max_over_mean_abs": med(ratio),
        "max_max_over_mean_abs": max(ratio, default=None),
        "gaussian": GAUSSIAN,
    }
