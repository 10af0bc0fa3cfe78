"""The weight-only scores and the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from ..models.modules import ModuleMap, weight_2d
from ..quant import Scheme
from ..registry import Registry

#: |w - mean| beyond this many standard deviations of the unit counts as an outlier.
OUTLIER_SIGMAS = 3.0
GRANULARITIES = ("tensor", "component", "layer")


#: What a score reads: the weights alone, a language's documents (input Gram matrices, squared gradients) or a
#: ``locate`` output. Only ``weights`` scores are the same for every language.
NEEDS = ("weights", "gram", "fisher", "locate")


@dataclass(frozen=True)
class ScoreKind:
    """A registry entry. A ``weights`` score's ``compute(w, q, rng)`` gets a unit's weights ``w`` and their
    quantized values ``q`` (flat float64 arrays) and a generator seeded once per run, and returns the score
    (higher: more sensitive). A ``gram`` or ``fisher`` score's ``tensor(dw, stat)`` gets one tensor's
    quantization error ``W - Q(W)`` ([out, in], float64) and the language's statistic for it (the input Gram
    matrix [in, in] or the squared gradients [out, in]); the unit's score is ``finish`` of their sum. A
    ``locate`` score is read from a locate output (:mod:`.data`)."""

    name: str
    help: str
    compute: Callable[[np.ndarray, np.ndarray, np.random.Generator], float] | None = None
    needs: str = "weights"
    tensor: Callable[[torch.Tensor, torch.Tensor], float] | None = None
    finish: Callable[[float], float] | None = None


def _kurtosis(w, q, rng) -> float:
    d = w - w.mean()
    m2 = float(np.mean(d**2))
    return float(np.mean(d**4)) / m2**2 - 3.0 if m2 > 0 else 0.0


def _max_over_mean(w, q, rng) -> float:
    a = np.abs(w)
    return float(a.max() / a.mean()) if a.mean() > 0 else 0.0


def _outliers(w, q, rng) -> float:
    sd = w.std()
    return float(np.mean(np.abs(w - w.mean()) > OUTLIER_SIGMAS * sd)) if sd > 0 else 0.0


def _rel_frob(w, q, rng) -> float:
    n = np.linalg.norm(w)
    return float(np.linalg.norm(w - q) / n) if n > 0 else 0.0


def _sqnr(w, q, rng) -> float:
    err = float(np.sum((w - q) ** 2))
    return float(10 * np.log10(np.sum(w**2) / err)) if err > 0 else float("inf")


SCORES: Registry[ScoreKind] = Registry("score", ScoreKind, group="quant_disparity.scores")
for _entry in (
    ScoreKind("variance", "variance of the unit's weights", lambda w, q, rng: float(np.var(w))),
    ScoreKind("kurtosis", "excess kurtosis of the weights (heavy tails)", _kurtosis),
    ScoreKind("max_over_mean", "max |w| / mean |w|", _max_over_mean),
    ScoreKind("outlier_share", f"share of weights beyond {OUTLIER_SIGMAS:g} standard deviations", _outliers),
    ScoreKind("rel_frobenius", "quantization error ||W - Q(W)||_F / ||W||_F under the scheme", _rel_frob),
    ScoreKind("sqnr_db", "signal to quantization noise, 10 log10 ||W||^2 / ||W - Q(W)||^2 (lower: worse)", _sqnr),
    ScoreKind("magnitude", "baseline: mean |w|", lambda w, q, rng: float(np.mean(np.abs(w)))),
    ScoreKind("random", "baseline: uniform in [0, 1) from the seed", lambda w, q, rng: float(rng.random())),
):
    SCORES.register(_entry)


@dataclass(frozen=True)
class UnitScores:
    unit: str
    tensors: tuple[str, ...]
    n_params: int
    scores: dict[str, float]


def _units(modmap: ModuleMap, targets: list[str], granularity: str) -> list[tuple[str, list[str]]]:
    if granularity not in GRANULARITIES:
        raise UserError(f"unknown granularity {granularity!r}", f"use {', '.join(GRANULARITIES)}")
    groups: dict[str, list[str]] = {}
    for name in targets:
        p = modmap[name]
        comp = "+".join(p.components)
        key = {"tensor": name, "component": comp, "layer": comp if p.layer is None else f"L{p.layer}"}[granularity]
        groups.setdefault(key, []).append(name)
    return list(groups.items())


def weight_score_names() -> list[str]:
    return [n for n in SCORES.names() if SCORES.get(n).needs == "weights"]


def compute_scores(
    model: torch.nn.Module,
    modmap: ModuleMap,
    scheme: Scheme,
    granularity: str = "layer",
    names: list[str] | None = None,
    seed: int = 0,
    targets: list[str] | None = None,
) -> list[UnitScores]:
    """Every weight-only score in ``names`` (default: all; per-language ones are skipped) for each unit of ``targets`` (default: the Linear weight matrices of
    the decoder blocks), units in model order. ``random`` draws once per unit from ``numpy.random.default_rng(seed)``."""
    kinds = [k for k in (SCORES.get(n) for n in (names or SCORES.names())) if k.needs == "weights"]
    params = dict(model.named_parameters(remove_duplicate=False))
    rng = np.random.default_rng(seed)
    out = []
    for unit, tensors in _units(modmap, targets or modmap.default_targets(), granularity):
        ws, qs = [], []
        with torch.no_grad():
            for name in tensors:
                w2d = weight_2d(params[name].detach(), modmap[name])
                ws.append(w2d.double().reshape(-1).cpu().numpy())
                qs.append(scheme.fake_quantize(w2d).double().reshape(-1).cpu().numpy())
        w, q = np.concatenate(ws), np.concatenate(qs)
        scores = {k.name: k.compute(w, q, rng) for k in kinds if k.compute is not None}
        out.append(UnitScores(unit, tuple(tensors), int(w.size), scores))
    return out


def to_markdown(units: list[UnitScores], title: str) -> str:
    names = list(units[0].scores) if units else []
    lines = [f"# {title}", "", "| unit | params | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for u in units:
        lines.append(f"| {u.unit} | {u.n_params:,} | " + " | ".join(f"{u.scores[n]:.6g}" for n in names) + " |")
    return "\n".join(lines) + "\n"
