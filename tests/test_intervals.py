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


# -- an exact 0.0 is a value, not a missing one ------------------------------------------------------------------
def _est(v, ci=None):
    return {"value": v, "ci95": ci}


def _lang_row(lang, rel):
    e = _est(rel, None if rel is None else [rel - 0.01, rel + 0.01])
    return {"id": lang, "name": lang, "joshi_class": 5, "n_docs": 10, "bpb_fp": _est(1.0), "bpb_q": _est(1.0),
            "delta_bpb": e, "rel_delta_bpb": e, "kl_bits": _est(0.0), "top1_agreement": _est(1.0),
            "ppl_ratio": _est(1.0)}


def test_audit_tables_sort_an_exact_zero_damage_as_a_value_and_render_it():
    from quant_disparity.report.tables import audit_rows

    rows = audit_rows({"languages": [_lang_row("neg", -0.1), _lang_row("undef", None), _lang_row("zero", 0.0),
                                     _lang_row("pos", 0.2)]})
    assert [r[0].split()[0] for r in rows] == ["pos", "zero", "neg", "undef"]
    zero = rows[1]
    assert zero[4].startswith("+0.000") and zero[5].startswith("+0.0%") and zero[6].startswith("0.000")


def test_audit_summary_picks_a_zero_damage_language_as_the_best():
    from quant_disparity.audit import summarize
    from quant_disparity.config import AuditConfig

    rng = np.random.default_rng(0)
    hurt = _docs(rng, 10, 0.3)
    same = _docs(rng, 10, 0.0)
    same["nll"] = same["nll_ref"].copy()  # the quantized model is the reference (fp16/none): exactly 0.0
    stats = [language_stats("heb_Hebr", hurt, 50, rng), language_stats("eng_Latn", same, 50, rng)]
    assert stats[1].estimates["rel_delta_bpb"].value == 0.0
    s = summarize(stats, AuditConfig(), rng)
    assert s["best_language"]["lang"] == "eng_Latn" and s["best_language"]["rel_delta_bpb"]["value"] == 0.0
    assert s["worst_language"]["lang"] == "heb_Hebr"


def test_study_worst_language_can_be_one_with_zero_damage():
    from quant_disparity.experiments.results import worst_language

    per_lang = {"a": {"rel_delta_bpb": _est(-0.05)}, "b": {"rel_delta_bpb": _est(0.0)},
                "c": {"rel_delta_bpb": _est(None)}}
    assert worst_language(per_lang) == "b"


def test_study_figures_draw_an_exact_zero_as_zero(monkeypatch):
    import quant_disparity.report as report_pkg
    from quant_disparity.report import experiment

    per_lang = {"a": {"rel_delta_bpb": _est(-0.05)}, "b": {"rel_delta_bpb": _est(0.0)},
                "c": {"rel_delta_bpb": _est(None)}}
    seen = {}

    class FakePlots:  # captures the matrix the heatmap would draw
        @staticmethod
        def heatmap(m, *args):
            seen["m"] = m

    monkeypatch.setattr(report_pkg, "plots", FakePlots, raising=False)
    experiment.figure_trial_heatmap({"languages": [{"id": x} for x in per_lang],
                                     "trials": [{"name": "t", "languages": per_lang}]})
    assert seen["m"][0, 1] == 0.0 and np.isnan(seen["m"][0, 2]) and seen["m"][0, 0] == pytest.approx(-5.0)
