"""Intervals that mean what they say: Spearman under the null, too few documents, many claims at once, exact zeros."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quant_disparity.analysis import correlation, language_stats

LN2 = math.log(2)


def _docs(rng, n_docs, rel_delta, noise=0.05):
    """One language's documents: true relative Δbpb ``rel_delta``, per-document noise, varying lengths."""
    nbytes = rng.integers(200, 2000, n_docs).astype(float)
    fp = 1.0 + 0.1 * rng.standard_normal(n_docs)
    q = fp * (1 + rel_delta) * (1 + noise * rng.standard_normal(n_docs))
    n_pred = nbytes / 3
    return {"nll_ref": fp * nbytes * LN2, "nll": q * nbytes * LN2, "bytes": nbytes, "n_pred": n_pred,
            "kl": 0.1 * n_pred, "top1": 0.9 * n_pred}


# Joshi-like resource classes, skewed towards class 5 as real panels are: many ties, and resamples of a few
# languages often have a single class (the case that used to be dropped).
_CLASSES, _P = np.arange(1, 6, dtype=float), np.array([0.1, 0.15, 0.1, 0.15, 0.5])


def _null_false_positive_rate(n_lang: int, n_sims: int, seed: int, x_fixed=None) -> float:
    """Share of simulations whose Spearman interval excludes 0 when damage and resource class are independent.

    Each language has 20 documents whose values scatter around its own damage (drawn independently of the
    class); its document-level bootstrap replicates go into the two-stage bootstrap exactly as in
    ``correlation`` (same ``spearman_replicates`` and ``_ci``)."""
    from quant_disparity.analysis.stats import _ci, resample_counts, spearman_replicates

    rng = np.random.default_rng(seed)
    hits, n_docs, n_boot = 0, 20, 200
    for _ in range(n_sims):
        x = x_fixed if x_fixed is not None else rng.choice(_CLASSES, n_lang, p=_P)
        while np.ptp(x) == 0:
            x = rng.choice(_CLASSES, n_lang, p=_P)
        docs = rng.standard_normal(n_lang)[:, None] + 0.5 * rng.standard_normal((n_lang, n_docs))
        y_reps = docs @ resample_counts(n_docs, n_boot, rng).T / n_docs  # [n_lang, n_boot]
        point, reps = spearman_replicates(x, docs.mean(axis=1), y_reps, rng)
        hits += _ci(point, reps).excludes_zero
    return hits / n_sims


@pytest.mark.parametrize("n_lang, n_sims, upper", [(6, 600, 0.065), (12, 400, 0.075)])
def test_spearman_interval_under_the_null_excludes_zero_about_5_percent_of_the_time(n_lang, n_sims, upper):
    # Standard error of a 5% rate: 0.9 points with 600 simulations, 1.1 with 400; each bound is about 2
    # standard errors above 5% and about 3 above the rate measured with this method (6: 2%, 12: 4.4%).
    # Before degenerate replicates counted as 0 the rates were about 10% (6) and 8% (12) here.
    rate = _null_false_positive_rate(n_lang, n_sims, seed=0)
    assert rate <= upper, rate
    if n_lang == 12:
        # and not vacuously conservative: twelve languages carry enough rank information for a real test
        # (six heavily tied ones often do not, so there the rate is below 5%, as it must be)
        assert rate >= 0.025, rate


def test_spearman_interval_of_the_logs_six_language_panel_is_not_one_sided():
    # eng deu fra cmn arb are Joshi class 5, heb is 3: a third of the language resamples lack heb, their
    # correlation is undefined; dropping them left only replicates with heb, and the interval one-sided
    # (REPLICATION.md's C02 for SmolLM2 was -0.65 [-0.95, -0.65] from one sentence per language).
    x = np.array([5, 5, 5, 5, 3, 5], dtype=float)
    assert _null_false_positive_rate(6, 200, seed=3, x_fixed=x) <= 0.05
