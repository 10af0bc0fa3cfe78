"""Choosing what to protect under a budget: objectives over languages, the additive estimate, greedy and
knapsack selection. Pure functions on arrays (no model): :mod:`.search` measures and evaluates.

Vocabulary. ``rel [L]``: each language's relative Δbpb (bpb_q − bpb_fp) / bpb_fp under the base plan (every
unit of the universe quantized). ``recovery [U, L]``: how much protecting unit ``u`` alone lowers it (the
protect-one effect, measured). The *additive estimate* of protecting a set S is ``rel − Σ_{u∈S} recovery[u]``;
interactions between units make it wrong, which is why :mod:`.search` measures its candidates.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from ..errors import UserError, did_you_mean

#: What a search minimises over the languages' relative Δbpb.
OBJECTIVES = {
    "worst": "the largest relative Δbpb over the languages (the worst-served language)",
    "mean": "the mean relative Δbpb over the languages",
    "disparity": "mean relative Δbpb of the low-resource languages minus that of the high-resource ones "
    "(the difference of the audit's disparity measure; its ratio can be undefined)",
}


def check_objective(name: str) -> str:
    if name not in OBJECTIVES:
        raise UserError(
            f"unknown objective {name!r}{did_you_mean(name, list(OBJECTIVES))}", f"use {', '.join(OBJECTIVES)}"
        )
    return name


def objective_value(rel: np.ndarray, objective: str, low: np.ndarray | None = None) -> np.ndarray:
    """The objective of relative Δbpb ``rel [..., L]`` (the last axis the languages; any leading axes, e.g.
    bootstrap replicates). ``low [L]`` (bool) marks the low-resource languages, for ``disparity``."""
    rel = np.asarray(rel, dtype=np.float64)
    if objective == "worst":
        return rel.max(axis=-1)
    if objective == "mean":
        return rel.mean(axis=-1)
    if objective == "disparity":
        if low is None or not low.any() or low.all():
            raise UserError("objective disparity needs at least one low- and one high-resource language")
        return rel[..., low].mean(axis=-1) - rel[..., ~low].mean(axis=-1)
    raise UserError(f"unknown objective {objective!r}")


def estimate(rel: np.ndarray, recovery: np.ndarray, chosen: Sequence[int]) -> np.ndarray:
    """The additive estimate of each language's relative Δbpb when the units ``chosen`` are protected."""
    idx = list(chosen)
    return rel - (recovery[idx].sum(axis=0) if idx else 0.0)


def greedy(
    rel: np.ndarray, recovery: np.ndarray, costs: np.ndarray, capacity: float, objective: str, low=None
) -> list[int]:
    """Add, one at a time, the unit with the largest estimated objective gain per unit of cost that still fits,
    while some unit improves the objective. Ties go to the lower index (deterministic)."""
    chosen: list[int] = []
    spent = 0.0
    current = float(objective_value(estimate(rel, recovery, chosen), objective, low))
    while True:
        best, best_rate, best_val = None, 0.0, current
        for u in range(len(costs)):
            if u in chosen or spent + costs[u] > capacity:
                continue
            val = float(objective_value(estimate(rel, recovery, [*chosen, u]), objective, low))
            gain = current - val
            if gain <= 0:
                continue
            rate = gain / costs[u] if costs[u] > 0 else math.inf
            if best is None or rate > best_rate:
                best, best_rate, best_val = u, rate, val
        if best is None:
            return sorted(chosen)
        chosen.append(best)
        spent += float(costs[best])
        current = best_val


def knapsack(gain: np.ndarray, costs: np.ndarray, capacity: float, resolution: int = 4000) -> list[int]:
    """0/1 knapsack: the set of units of largest total ``gain`` whose total cost is at most ``capacity``, by
    dynamic programming over costs discretised to ``capacity / resolution``. Costs are rounded *up*, so the
    set returned always fits the true budget; it is optimal for the rounded costs (exactly optimal when the
    costs are multiples of the step, e.g. integers with ``resolution = capacity``). Units of zero or
    negative gain are never chosen."""
    gain = np.asarray(gain, dtype=np.float64)
    costs = np.asarray(costs, dtype=np.float64)
    if capacity <= 0:
        free = [u for u in range(len(costs)) if costs[u] <= 0 and gain[u] > 0]
        return free
    step = capacity / resolution
    w = np.ceil(costs / step).astype(np.int64)
    w[costs <= 0] = 0
    cap = resolution
    best = np.zeros(cap + 1)
    take = np.zeros((len(costs), cap + 1), dtype=bool)
    for u in range(len(costs)):
        if gain[u] <= 0 or w[u] > cap:
            continue
        if w[u] == 0:
            best = best + gain[u]
            take[u, :] = True
            continue
        cand = np.full(cap + 1, -np.inf)
        cand[w[u] :] = best[: cap + 1 - w[u]] + gain[u]
        better = cand > best
        take[u] = better
        best = np.where(better, cand, best)
    chosen, c = [], cap
    for u in range(len(costs) - 1, -1, -1):
        if take[u, c]:
            chosen.append(u)
            c -= int(w[u])
    return sorted(chosen)


def brute_force(
    rel: np.ndarray, recovery: np.ndarray, costs: np.ndarray, capacity: float, objective: str, low=None
) -> tuple[list[int], float]:
    """Every subset (small problems only): the best estimated objective within the budget, and that value."""
    n = len(costs)
    best: tuple[list[int], float] = ([], float(objective_value(rel, objective, low)))
    for k in range(1, n + 1):
        for s in itertools.combinations(range(n), k):
            if costs[list(s)].sum() > capacity:
                continue
            v = float(objective_value(estimate(rel, recovery, s), objective, low))
            if v < best[1] - 1e-15:
                best = (list(s), v)
    return best


def linear_gains(recovery: np.ndarray, objective: str, low=None) -> list[np.ndarray]:
    """Per-unit gains whose sum is the objective's improvement under the additive estimate: exact for ``mean``
    and ``disparity`` (both linear in the languages' Δbpb); for ``worst`` (a maximum, not a sum) one gain
    vector per language, each a candidate the caller ranks by the estimated worst case."""
    if objective == "mean":
        return [recovery.mean(axis=1)]
    if objective == "disparity":
        assert low is not None
        return [recovery[:, low].mean(axis=1) - recovery[:, ~low].mean(axis=1)]
    return [recovery[:, j] for j in range(recovery.shape[1])] + [recovery.mean(axis=1)]


def candidates(
    rel: np.ndarray, recovery: np.ndarray, costs: np.ndarray, capacity: float, objective: str, low=None
) -> list[tuple[str, list[int], float]]:
    """Distinct candidate sets within the budget, best estimated objective first: greedy, and the knapsack on
    each of :func:`linear_gains`. Returns (how it was found, units, estimated objective)."""
    found: dict[tuple[int, ...], tuple[str, float]] = {}

    def add(how: str, units: list[int]) -> None:
        key = tuple(sorted(units))
        if key not in found:
            found[key] = (how, float(objective_value(estimate(rel, recovery, key), objective, low)))

    add("greedy", greedy(rel, recovery, costs, capacity, objective, low))
    for i, g in enumerate(linear_gains(recovery, objective, low)):
        how = "knapsack" if objective != "worst" else f"knapsack[{i}]"
        add(how, knapsack(g, costs, capacity))
    add("none", [])
    return sorted(((how, list(k), v) for k, (how, v) in found.items()), key=lambda x: (x[2], len(x[1]), x[1]))
