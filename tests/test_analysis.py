"""Bootstrap intervals (coverage on synthetic data), ratio-of-sums aggregation, disparity and correlation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quant_disparity.analysis import correlation, disparity, language_stats

LN2 = math.log(2)


def _synthetic(rng, n_docs, bpb_fp, rel_delta, noise=0.1):
    """Documents whose true relative Δbpb is ``rel_delta``; lengths vary (so ratio-of-sums matters)."""
    nbytes = rng.integers(200, 2000, n_docs).astype(float)
    fp = bpb_fp * (1 + noise * rng.standard_normal(n_docs))
    q = fp * (1 + rel_delta) * (1 + noise * rng.standard_normal(n_docs))
    n_pred = nbytes / 3
    return {
        "nll_ref": fp * nbytes * LN2,
        "nll": q * nbytes * LN2,
        "bytes": nbytes,
        "n_pred": n_pred,
        "kl": 0.1 * n_pred,
        "top1": 0.9 * n_pred,
    }


def test_aggregates_are_ratios_of_sums():
    docs = {
        "nll_ref": np.array([10.0, 30.0]),
        "nll": np.array([12.0, 33.0]),
        "bytes": np.array([10.0, 50.0]),
        "n_pred": np.array([5.0, 15.0]),
        "kl": np.array([1.0, 2.0]),
        "top1": np.array([4.0, 10.0]),
    }
    with pytest.warns(UserWarning, match="too few documents"):  # two documents: values, no interval
        s = language_stats("x", docs, 0, np.random.default_rng(0))
    assert s.estimates["bpb_fp"].value == pytest.approx(40 / 60 / LN2)
    assert s.estimates["bpb_q"].value == pytest.approx(45 / 60 / LN2)
    assert s.estimates["rel_delta_bpb"].value == pytest.approx(5 / 40)
    assert s.estimates["kl_bits"].value == pytest.approx(3 / 20 / LN2)
    assert s.estimates["top1_agreement"].value == pytest.approx(14 / 20)
    assert s.estimates["ppl_ratio"].value == pytest.approx(math.exp(45 / 20) / math.exp(40 / 20))
    assert s.estimates["log_degradation_pct"].value == pytest.approx((math.exp(5 / 20) - 1) * 100)


def test_bootstrap_interval_covers_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(123)
    truth, hits, trials = 0.2, 0, 300
    for _ in range(trials):
        s = language_stats("x", _synthetic(rng, 40, 1.0, truth), 400, rng)
        e = s.estimates["rel_delta_bpb"]
        hits += e.lo <= truth <= e.hi
    # percentile bootstrap with 40 documents: coverage a little under nominal; 300 trials -> se 1.3 points
    assert 0.88 <= hits / trials <= 0.99


def test_bootstrap_is_seeded_and_paired():
    rng = np.random.default_rng(5)
    n = 30
    nbytes = rng.integers(200, 2000, n).astype(float)
    fp = 1.0 * (1 + 0.3 * rng.standard_normal(n))  # documents differ a lot in difficulty ...
    q = fp * 1.1 * (1 + 0.01 * rng.standard_normal(n))  # ... while quantization costs each about 10 %
    docs = {
        "nll_ref": fp * nbytes * LN2,
        "nll": q * nbytes * LN2,
        "bytes": nbytes,
        "n_pred": nbytes / 3,
        "kl": nbytes / 30,
        "top1": nbytes / 4,
    }
    a = language_stats("x", docs, 500, np.random.default_rng(7))
    b = language_stats("x", docs, 500, np.random.default_rng(7))
    assert a.estimates["delta_bpb"] == b.estimates["delta_bpb"]
    # Unpaired: resample the two models' documents independently.
    r = np.random.default_rng(8)
    w1, w2 = (r.multinomial(n, np.full(n, 1 / n), size=500) for _ in range(2))
    unpaired = (w2 @ docs["nll"]) / (w2 @ nbytes) / LN2 - (w1 @ docs["nll_ref"]) / (w1 @ nbytes) / LN2
    lo_u, hi_u = np.percentile(unpaired, [2.5, 97.5])
    d = a.estimates["delta_bpb"]
    assert (d.hi - d.lo) < 0.25 * (hi_u - lo_u)


def test_disparity_ratio_is_undefined_when_high_resource_degradation_may_be_zero():
    rng = np.random.default_rng(1)
    high = _synthetic(rng, 30, 1.0, 0.0)
    high["nll"] = high["nll_ref"] * (1 + 0.05 * np.resize([1.0, -1.0], 30))  # half the documents +5 %, half -5 %
    langs = [language_stats("low1", _synthetic(rng, 30, 1.5, 0.3), 300, rng), language_stats("high1", high, 300, rng)]
    out = disparity(langs, {"low1": "low", "high1": "high"})
    assert out["ratio"]["value"] is None and "includes zero" in out["ratio"]["note"]
    assert out["difference"]["value"] == pytest.approx(out["low_mean"]["value"] - out["high_mean"]["value"])
    assert out["difference"]["ci95"][0] > 0


def test_disparity_ratio_when_defined():
    rng = np.random.default_rng(2)
    langs = [
        language_stats("l", _synthetic(rng, 40, 1.5, 0.4, noise=0.02), 300, rng),
        language_stats("h", _synthetic(rng, 40, 1.0, 0.1, noise=0.02), 300, rng),
    ]
    out = disparity(langs, {"l": "low", "h": "high"})
    assert out["ratio"]["value"] == pytest.approx(4.0, rel=0.2)
    lo, hi = out["ratio"]["ci95"]
    assert lo < out["ratio"]["value"] < hi


def test_disparity_needs_both_groups():
    rng = np.random.default_rng(3)
    langs = [language_stats("l", _synthetic(rng, 10, 1.0, 0.1), 50, rng)]
    assert disparity(langs, {"l": "low"})["ratio"]["value"] is None


def test_spearman_correlation_and_its_interval():
    rng = np.random.default_rng(4)
    # degradation falls with the resource measure: a strong negative correlation
    langs = [language_stats(f"l{i}", _synthetic(rng, 30, 1.0, 0.5 - 0.08 * i, noise=0.02), 300, rng) for i in range(6)]
    measure = {f"l{i}": float(i) for i in range(6)}
    out = correlation(langs, measure, "rel_delta_bpb", rng)
    assert out["spearman"]["value"] == pytest.approx(-1.0)
    assert out["spearman"]["ci95"][1] < 0
    few = correlation(langs[:2], measure, "rel_delta_bpb", rng)
    assert few["spearman"]["value"] is None


def test_vectorized_spearman_replicates_equal_scipy_per_replicate():
    import scipy.stats as sps

    from quant_disparity.analysis.stats import spearman_replicates

    g = np.random.default_rng(3)
    x = g.integers(0, 4, 8).astype(float)  # ties, and some replicates where x is constant
    y = g.normal(size=8)
    y_reps = y[:, None] + 0.5 * g.normal(size=(8, 300))
    point, reps = spearman_replicates(x, y, y_reps, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    for b in range(300):
        pick = rng.integers(0, 8, 8)
        xb, yb = x[pick], y_reps[pick, b]
        if np.ptp(xb) > 0 and np.ptp(yb) > 0:
            assert reps[b] == pytest.approx(sps.spearmanr(xb, yb).statistic, abs=1e-12)
        else:  # a constant side: no rank correlation, counted as 0 (no evidence), never dropped
            assert reps[b] == 0.0
    assert point == pytest.approx(sps.spearmanr(x, y).statistic)
