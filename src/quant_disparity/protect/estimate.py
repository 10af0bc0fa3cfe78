"""``locate --estimate SCORE --top K``: rank the units by a cheap score and measure only the top K.

A full protect-one (or quantize-only) sweep evaluates every unit. When a score ranks the units the way the sweep
would, measuring only its top K gives most of the sweep's answer (which units matter most) at a fraction of the
cost. The score is any score of :data:`.weights.SCORES` that does not itself come from a sweep: a weight score
(the same for every language) or a per-language one (``fisher``, ``grad_sq``, ``act_error``, ``hessian_diag``),
computed on the same selection documents the sweep evaluates. A per-language score ranks the units in each
language; the units are then ordered by their mean rank over the languages (ties: model order), so one set of K
units serves every language. ``sqnr_db`` is ranked lowest first (a low signal-to-noise ratio is the damage).

What the estimate recovers is measured against a full sweep (``benchmarks/bench_estimate.py``): per language,
the share of the full sweep's top-K units among the K measured, and whether its most effective unit is one of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from ..models.modules import ModuleMap
from ..quant import Scheme

#: Locate granularities whose units the scores can group (the scores' own: tensor, component, layer).
ESTIMATE_GRANULARITIES = ("layer", "component")

#: Scores where a low value is the damage.
LOW_IS_WORSE = frozenset({"sqnr_db"})


def check_estimate(score: str, top: int, granularity: str, pairs: Sequence[str]) -> None:
    """Everything about ``--estimate`` / ``--top`` that can be checked before loading; raises :class:`UserError`."""
    from .weights import SCORES

    if not score:
        if top:
            raise UserError("--top needs --estimate SCORE (the score that ranks the units)", "e.g. --estimate fisher")
        return
    kind = SCORES.get(score)
    if kind.needs == "locate":
        raise UserError(
            f"--estimate {score}: a measured score comes from a full sweep, which the estimate is there to avoid",
            "use a cheap score, e.g. --estimate fisher or --estimate rel_frobenius",
        )
    if granularity not in ESTIMATE_GRANULARITIES:
        raise UserError(
            f"--estimate works on {' or '.join(ESTIMATE_GRANULARITIES)} units, not {granularity!r}",
            "use --granularity layer or component",
        )
    if top < 1:
        raise UserError("--estimate needs --top K, the number of units to measure (K >= 1)", "e.g. --top 5")
    if pairs:
        raise UserError("--estimate measures single units; it does not take --pairs", "drop --pairs or --estimate")


@dataclass(frozen=True)
class EstimateRanking:
    score: str
    order: list[str]  # every unit, most damaging first
    values: dict[str, dict[str, float]]  # {"all" | lang: {unit: score}}
    mean_rank: dict[str, float] | None  # per-language scores: mean rank over the languages (0 = first)
    seconds: float

    def record(self, top: int) -> dict:
        chosen = self.order[:top]
        return {
            "score": self.score,
            "top": top,
            "measured_units": chosen,
            "unmeasured_units": self.order[top:],
            "ranking": [
                {
                    "unit": u,
                    **({"mean_rank": round(self.mean_rank[u], 4)} if self.mean_rank is not None else {}),
                    "score": {k: _plain(v.get(u)) for k, v in self.values.items()},
                }
                for u in self.order
            ],
            "order": "lowest score first" if self.score in LOW_IS_WORSE else "highest score first",
            "combined": "mean rank over the languages" if self.mean_rank is not None else "one value per unit",
            "score_s": round(self.seconds, 3),
        }


def _plain(v: float | None) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def _ranks(values: Mapping[str, float], units: Sequence[str], low_is_worse: bool) -> dict[str, float]:
    """0 for the most damaging unit; undefined values last; ties in model order."""
    sign = 1.0 if low_is_worse else -1.0
    key = {u: (0, sign * values[u]) if u in values and np.isfinite(values[u]) else (1, 0.0) for u in units}
    ordered = sorted(units, key=lambda u: (key[u], units.index(u)))
    return {u: float(i) for i, u in enumerate(ordered)}


def rank_units(
    score: str,
    units: Sequence[str],
    model: torch.nn.Module,
    modmap: ModuleMap,
    scheme: Scheme,
    universe: list[str],
    granularity: str,
    windows: Mapping[str, Sequence] | None,
    seed: int,
    log: Callable[[str], None] = lambda m: None,
) -> EstimateRanking:
    """The units in order of the score (most damaging first). ``windows``: each language's windows (needed by a
    per-language score)."""
    from .data import language_scores
    from .weights import SCORES, compute_scores

    t0 = time.perf_counter()
    kind = SCORES.get(score)
    low = score in LOW_IS_WORSE
    units = list(units)
    if kind.needs == "weights":
        rows = compute_scores(model, modmap, scheme, granularity, [score], seed, targets=universe)
        vals = {r.unit: r.scores[score] for r in rows}
        ranks = _ranks(vals, units, low)
        order = sorted(units, key=lambda u: ranks[u])
        return EstimateRanking(score, order, {"all": vals}, None, time.perf_counter() - t0)
    assert windows is not None, "a per-language score needs the languages' windows"
    per_lang: dict[str, dict[str, float]] = {}
    for lang, wins in windows.items():
        t1 = time.perf_counter()
        rows = language_scores(model, modmap, scheme, wins, [score], granularity, targets=universe)
        per_lang[lang] = {r.unit: r.scores[score] for r in rows}
        log(f"--estimate {score}: {lang} scored in {time.perf_counter() - t1:.1f} s")
    mean_rank = {u: float(np.mean([_ranks(v, units, low)[u] for v in per_lang.values()])) for u in units}
    order = sorted(units, key=lambda u: (mean_rank[u], units.index(u)))
    return EstimateRanking(score, order, per_lang, mean_rank, time.perf_counter() - t0)


def recovery(full: Mapping, measured_units: Sequence[str], top: int) -> dict:
    """How much of a full sweep's answer ``measured_units`` holds, per language of the full sweep (a
    ``locate.json`` mapping): the share of its top-``top`` units (by effect) among them, and whether its most
    effective unit is one of them."""
    out: dict = {}
    chosen = set(measured_units)
    for lang, res in full["results"].items():
        eff = {u: r["effect"]["value"] for u, r in res["units"].items() if r["effect"]["value"] is not None}
        best = sorted(eff, key=lambda u: -eff[u])[:top]
        out[lang] = {
            "full_top": best,
            "share_of_full_top": len(chosen & set(best)) / len(best) if best else None,
            "best_found": bool(best) and best[0] in chosen,
        }
    return out


__all__ = ["ESTIMATE_GRANULARITIES", "EstimateRanking", "check_estimate", "rank_units", "recovery"]
