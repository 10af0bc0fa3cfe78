"""How far a head's attention statistic on one group of documents departs from another group's.

**Measure.** For one statistic (:data:`.attention.STATS`) and one head, with per-document sums ``num`` and
query counts ``den``: the group means are ratios of sums, ``m_A = Σ_A num / Σ_A den`` and ``m_B`` likewise,
and the *standardized difference* is

    d = (m_A - m_B) / s_w

where ``s_w`` is the pooled within-group standard deviation of the per-document values ``num / den`` over every
group involved (for a language against the rest of the panel: the within-language spread, pooled over all
languages; ``N - G`` degrees of freedom). ``d`` says by how many typical document-to-document differences the
group's mean departs. Documents without a query for the statistic (no token with a script) leave it.

**Beyond the common shift** (``relative=True``, what ``inspect heads`` uses). A language moves *every* head's
statistics at once: its documents are longer or shorter in tokens (the attended distance and the entropy grow
with the context), its script decides what a "same script" key is, its tokens are split differently. A head that
moves with all the others is not specific to the language; the input is. So the measure is the head's departure
from the *common shift*, the median of ``d`` over all heads (features):

    d_rel = d - median_heads(d)

recomputed on every bootstrap replicate (the median is part of the statistic). On the bundled models the raw
``d`` called 45-100 % of the heads specific to some languages, driven by document length, and the half-split
check (below) called up to 18 % of the heads specific at ``|d| > 1``; ``d_rel`` at the default threshold 2 keeps
the check at most 2.2 % (numbers in the README).

**Interval.** A bootstrap over documents, stratified by group: every group's documents are resampled with
replacement within the group, and ``m_A``, ``m_B`` and ``s_w`` are recomputed on each replicate; the percentile
interval of ``d`` at ``level`` (the command uses the family-wise level of its four statistics, Bonferroni:
1 - 0.05 / 4 = 98.75 %). A target group with fewer than ``MIN_DOCS_FOR_INTERVAL`` documents gets no
interval (and so can never be called specific).

**Specific.** A head is specific on a statistic when the whole interval of ``d`` lies beyond ``±threshold``;
it is specific for the group when it is so on at least one statistic. The false-positive
check runs the same test on one language's documents split in two halves (alternate documents in corpus
order): there is no difference to find, so the share of heads it calls specific estimates the rule's
false-positive rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..analysis.stats import MIN_DOCS_FOR_INTERVAL, resample_counts, spearman_replicates

#: Default threshold on |d_rel|: the interval must lie beyond two within-group document standard deviations (at 1,
#: the half-split false-positive check of the bundled models reached 4 % of heads on Gemma and 20 % on SmolLM2).
THRESHOLD = 2.0


def family_level(n_tests: int, alpha: float = 0.05) -> float:
    """The interval level that keeps ``n_tests`` intervals at ``1 - alpha`` family-wise (Bonferroni)."""
    return 1 - alpha / n_tests


@dataclass(frozen=True)
class Specificity:
    """``d``, its interval and the verdict for every head (flattened ``[feature]``); NaN where undefined."""

    d: np.ndarray
    common_shift: float  # the median of the raw d over the features, subtracted from d when relative (else 0)
    lo: np.ndarray
    hi: np.ndarray
    specific: np.ndarray  # bool
    has_interval: bool


def _d(num: np.ndarray, den: np.ndarray, x: np.ndarray, w: np.ndarray, target: np.ndarray, groups: np.ndarray):
    """``d`` for weights ``w [R, docs]`` (resample multiplicities; R = 1 for the point value) -> ``[R, F]``."""
    wa, wb = w * target[None, :], w * ~target[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        ma = (wa @ num) / (wa @ den)[:, None]
        mb = (wb @ num) / (wb @ den)[:, None]
        ss = np.zeros((w.shape[0], num.shape[1]))
        dof = -len(np.unique(groups))
        for g in np.unique(groups):
            sel = groups == g
            wg = w[:, sel]
            n_g = wg.sum(axis=1)[:, None]
            s1, s2 = wg @ x[sel], wg @ (x[sel] ** 2)
            ss += s2 - s1 * s1 / n_g
        dof += int(w[0].sum())
        sd = np.sqrt(np.clip(ss, 0, None) / dof) if dof > 0 else np.full_like(ss, np.nan)
        d = (ma - mb) / sd
    return np.where(np.isfinite(d), d, np.nan)


def specificity(
    num: np.ndarray,
    den: np.ndarray,
    groups: Sequence[int] | np.ndarray,
    target: int,
    *,
    threshold: float = THRESHOLD,
    level: float = 0.95,
    n_boot: int = 1000,
    rng: np.random.Generator,
    relative: bool = False,
) -> Specificity:
    """The standardized difference (module docstring) of group ``target`` against every other group, per
    feature (column of ``num [docs, F]``), with ``den [docs]`` queries and ``groups[doc]`` each document's group;
    ``relative``: less the common shift (the median over the features), on the point value and on every
    replicate."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    groups_a = np.asarray(groups)
    keep = den > 0
    num, den, groups_a = num[keep], den[keep], groups_a[keep]
    target_mask = groups_a == target
    with np.errstate(divide="ignore", invalid="ignore"):
        x = num / den[:, None]
    point = _d(num, den, x, np.ones((1, len(den))), target_mask, groups_a)[0]
    shift = _median(point[None, :])[0] if relative else 0.0
    point = point - shift
    has_interval = int(target_mask.sum()) >= MIN_DOCS_FOR_INTERVAL and bool((~target_mask).any())
    w = np.zeros((n_boot, len(den)))
    for g in np.unique(groups_a):  # the same draws whether or not the interval is reported
        idx = np.nonzero(groups_a == g)[0]
        w[:, idx] = resample_counts(len(idx), n_boot, rng)
    if not has_interval:
        nan = np.full_like(point, np.nan)
        return Specificity(point, float(shift), nan, nan, np.zeros(point.shape, dtype=bool), False)
    reps = _d(num, den, x, w, target_mask, groups_a)
    if relative:
        reps = reps - _median(reps)[:, None]
    with np.errstate(invalid="ignore"):
        tail = 50 * (1 - level)
        lo, hi = np.nanpercentile(reps, (tail, 100 - tail), axis=0) if reps.size else (point, point)
    specific = np.isfinite(lo) & ((lo > threshold) | (hi < -threshold))
    return Specificity(point, float(shift), lo, hi, specific, True)


def _median(v: np.ndarray) -> np.ndarray:
    """The median over the features of each row, ignoring undefined values (NaN where a row has none)."""
    out = np.full(v.shape[0], np.nan)
    ok = np.isfinite(v).any(axis=1)
    if ok.any():
        out[ok] = np.nanmedian(v[ok], axis=1)
    return out


def half_split(n_docs: int) -> np.ndarray:
    """Group labels 0 / 1 for alternate documents (corpus order): the halves of the false-positive check."""
    return np.arange(n_docs) % 2


def rank_correlation(x: np.ndarray, y: np.ndarray, n_boot: int, rng: np.random.Generator) -> dict:
    """Spearman correlation of ``x`` and ``y`` across units (heads) with a bootstrap interval that resamples
    the units (:func:`quant_disparity.analysis.stats.spearman_replicates` with fixed values per unit); pairs with
    a missing side leave."""
    from ..analysis.stats import interval, spearman_undefined

    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out: dict = {"n_heads": int(ok.sum())}
    why = spearman_undefined(x) or (None if len(y) == 0 or np.ptp(y) > 0 else "the effect is the same for every head")
    if why:
        out["spearman"] = {"value": None, "ci95": None, "note": why.replace("languages", "heads")}
        return out
    point, reps = spearman_replicates(x, y, np.repeat(y[:, None], n_boot, axis=1), rng)
    out["spearman"] = interval(point, reps).to_dict()
    return out


__all__ = ["THRESHOLD", "Specificity", "family_level", "half_split", "rank_correlation", "specificity"]
