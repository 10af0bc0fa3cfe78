"""Per-language aggregation, paired bootstrap confidence intervals, disparity and correlation.

Aggregates are ratios of sums over documents (Σ nats / Σ bytes), never means of per-document ratios. A
bootstrap replicate resamples a language's documents with replacement and recomputes every statistic from
the same resample for both models (paired). Intervals are percentile intervals.

A language with fewer than :data:`MIN_DOCS_FOR_INTERVAL` documents gets its values without an interval (a
note says why, and a :class:`TooFewDocumentsWarning` is issued once per language); a cross-language
statistic (group means, disparity, Spearman) with such a member keeps its value and has no interval either:
an interval that silently treated that language's damage as known exactly would be too narrow.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

#: Nats per bit: a sum of negative log-likelihoods in nats over ``LN2 * bytes`` is bits per byte.
LN2 = math.log(2)

#: The two percentiles of the bootstrap replicates that bound a 95% percentile interval.
CI_PERCENTILES = (2.5, 97.5)

#: No replicates: a value shown without an interval.
NO_REPLICATES = np.zeros(0)

#: Fewest languages for a rank correlation across languages (with two, Spearman is always +1 or -1).
MIN_LANGUAGES_FOR_SPEARMAN = 3

#: Fewest documents for which a language gets a bootstrap interval. A with-replacement resample of n
#: documents takes one of only C(2n-1, n) distinct forms: 1, 3, 10, 35, 126 for n = 1..5. With n = 1 every
#: replicate is the point value (a zero-width "interval" printed as certainty); with n = 2 or 3 the
#: resamples made of a single repeated document have probability n * n**-n = 50% and 11%, more than the 5%
#: the two percentile tails hold, so the "interval" is just the range of the per-document values; with
#: n = 4 only 35 distinct resamples remain and the 2.5% tails are one or two of them. From 5 (126 distinct
#: resamples, single-document ones 0.16%) the percentiles are set by genuine mixtures of documents; coverage
#: is still somewhat below nominal at that size (percentile bootstrap), which the reports state.
MIN_DOCS_FOR_INTERVAL = 5


class TooFewDocumentsWarning(UserWarning):
    """A language has fewer than MIN_DOCS_FOR_INTERVAL documents: its numbers carry no interval."""


def too_few_documents(n_docs: int) -> str | None:
    """The note for a language with too few documents for an interval, else None."""
    if n_docs < MIN_DOCS_FOR_INTERVAL:
        return f"too few documents ({n_docs} < {MIN_DOCS_FOR_INTERVAL}) for an interval"
    return None


def warn_too_few_documents(lang: str, n_docs: int) -> None:
    warnings.warn(
        f"{lang}: {too_few_documents(n_docs)}; its numbers are reported without one and claims on it are inconclusive",
        TooFewDocumentsWarning,
        stacklevel=3,
    )


def no_interval_note(langs: Sequence[str]) -> str:
    """Note of a cross-language statistic whose members ``langs`` have no interval."""
    return f"no interval: too few documents (< {MIN_DOCS_FOR_INTERVAL}) in {', '.join(langs)}"


@dataclass(frozen=True)
class Estimate:
    value: float | None
    lo: float | None = None
    hi: float | None = None
    note: str | None = None  # why a value is undefined

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"value": self.value, "ci95": None if self.lo is None else [self.lo, self.hi]}
        if self.note:
            d["note"] = self.note
        return d

    @classmethod
    def from_dict(cls, data: Mapping) -> Estimate:
        ci = data.get("ci95")
        lo, hi = ci if ci else (None, None)
        return cls(data.get("value"), lo, hi, note=data.get("note"))

    @property
    def excludes_zero(self) -> bool:
        if self.lo is None:
            return False
        assert self.hi is not None  # an interval has both bounds
        return self.lo > 0 or self.hi < 0


def interval(point: float, reps: np.ndarray, no_interval: str | None = None) -> Estimate:
    """``point`` with the 95% percentile interval of its bootstrap replicates ``reps`` (non-finite ones left out).

    With ``no_interval`` (why there is none, e.g. too few documents) the value alone, carrying that note; also
    the value alone when no replicate is finite. A non-finite ``point`` is undefined."""
    if not np.isfinite(point):
        return Estimate(None, note="not finite")
    reps = NO_REPLICATES if no_interval else reps[np.isfinite(reps)]
    if reps.size == 0:
        return Estimate(float(point), note=no_interval)
    lo, hi = np.percentile(reps, CI_PERCENTILES)
    return Estimate(float(point), float(lo), float(hi))


def may_be_zero(denominator: Estimate) -> bool:
    """The rule for ratios: a ratio is undefined when its denominator may be zero, i.e. when the denominator has
    no interval or its 95% interval includes zero. Dividing by a quantity that may be zero gives meaningless or
    infinite ratios (the original log's "214x")."""
    if denominator.lo is None:
        return True
    assert denominator.hi is not None  # an interval has both bounds
    return denominator.lo <= 0 <= denominator.hi


def resample_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot, n]`` multiplicities of a with-replacement resample of ``n`` documents."""
    if n == 0:
        return np.zeros((n_boot, 0))
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


#: Per-language statistics, in report order. ``fp``: reference model; ``q``: quantized model.
LANG_METRICS = (
    "bpb_fp",
    "bpb_q",
    "delta_bpb",
    "rel_delta_bpb",
    "ppl_fp",
    "ppl_q",
    "ppl_ratio",
    "log_degradation_pct",
    "kl_bits",
    "top1_agreement",
)


def language_metrics(sums: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All per-language statistics (:data:`LANG_METRICS`, in that order) from a language's sums over documents
    of nll (quantized), nll_ref (reference), kl, top1, n_pred and bytes: ratios of sums, never means of
    per-document ratios. Works elementwise, so bootstrap replicates of the sums give replicates of every
    statistic."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        bpb_fp = sums["nll_ref"] / (LN2 * sums["bytes"])
        bpb_q = sums["nll"] / (LN2 * sums["bytes"])
        ppl_fp = np.exp(sums["nll_ref"] / sums["n_pred"])
        ppl_q = np.exp(sums["nll"] / sums["n_pred"])
        return {
            "bpb_fp": bpb_fp,
            "bpb_q": bpb_q,
            "delta_bpb": bpb_q - bpb_fp,
            "rel_delta_bpb": (bpb_q - bpb_fp) / bpb_fp,
            "ppl_fp": ppl_fp,
            "ppl_q": ppl_q,
            "ppl_ratio": ppl_q / ppl_fp,
            "log_degradation_pct": (ppl_q / ppl_fp - 1) * 100,
            "kl_bits": sums["kl"] / sums["n_pred"] / LN2,
            "top1_agreement": sums["top1"] / sums["n_pred"],
        }


@dataclass
class LanguageStats:
    """One language's estimates with their replicates (the audit writes it as a :class:`.records.LanguageRow`)."""

    lang: str
    n_docs: int
    n_bytes: int
    n_pred: int
    estimates: dict[str, Estimate]
    replicates: dict[str, np.ndarray]  # per metric, [n_boot] (kept for cross-language statistics)
    interval_note: str | None = None  # set when the language has too few documents for an interval


def language_stats(lang: str, docs: Mapping[str, np.ndarray], n_boot: int, rng: np.random.Generator) -> LanguageStats:
    """``docs`` holds per-document arrays: nll, nll_ref, kl, top1, n_pred, bytes."""
    arrays = {k: np.asarray(docs[k], dtype=np.float64) for k in ("nll", "nll_ref", "kl", "top1", "n_pred", "bytes")}
    n = len(arrays["nll"])
    point = language_metrics({k: v.sum() for k, v in arrays.items()})
    weights = resample_counts(n, n_boot, rng)  # drawn even without an interval: the stream stays the same
    reps = language_metrics({k: weights @ v for k, v in arrays.items()})
    note = too_few_documents(n)
    if note:
        warn_too_few_documents(lang, n)
    estimates = {k: interval(float(point[k]), reps[k], note) for k in LANG_METRICS}
    return LanguageStats(
        lang=lang,
        n_docs=n,
        n_bytes=int(arrays["bytes"].sum()),
        n_pred=int(arrays["n_pred"].sum()),
        estimates=estimates,
        replicates=reps,
        interval_note=note,
    )


RATIO_INCLUDES_ZERO = "undefined: the high-resource mean's 95% CI includes zero"


def disparity(per_lang: Sequence[LanguageStats], groups: Mapping[str, str], metric: str = "rel_delta_bpb") -> dict:
    """Low- vs high-resource comparison of ``metric``: ratio and difference of group means, with CIs.

    ``groups`` maps language -> "low" | "high" (others are left out). The ratio is undefined when the
    interval of the high-resource mean includes zero (:func:`may_be_zero`). A member language with too few documents
    for an interval leaves the group means, difference and ratio without an interval (values kept); if it is
    a high-resource language the ratio is undefined, since whether its denominator may be zero is unknown.
    """
    low = [s for s in per_lang if groups.get(s.lang) == "low"]
    high = [s for s in per_lang if groups.get(s.lang) == "high"]
    out: dict[str, Any] = {"metric": metric, "low": [s.lang for s in low], "high": [s.lang for s in high]}
    if not low or not high:
        note = "needs at least one low- and one high-resource language"
        for k in ("low_mean", "high_mean", "difference", "ratio"):
            out[k] = Estimate(None, note=note).to_dict()
        return out
    mean = lambda ss: float(np.mean([s.estimates[metric].value for s in ss]))
    rmean = lambda ss: np.mean([s.replicates[metric] for s in ss], axis=0)
    lo_p, hi_p, lo_r, hi_r = mean(low), mean(high), rmean(low), rmean(high)
    short = [s.lang for s in (*low, *high) if s.interval_note]
    if short:
        # values stay, intervals go; the ratio is defined only if the high-resource mean's interval is known
        low_short = [s.lang for s in low if s.interval_note]
        high_short = [s.lang for s in high if s.interval_note]
        lo_est = interval(lo_p, lo_r, no_interval_note(low_short) if low_short else None)
        hi_est = interval(hi_p, hi_r, no_interval_note(high_short) if high_short else None)
        out["low_mean"], out["high_mean"] = lo_est.to_dict(), hi_est.to_dict()
        out["difference"] = interval(lo_p - hi_p, NO_REPLICATES, no_interval_note(short)).to_dict()
        if high_short:
            out["ratio"] = Estimate(
                None, note=f"undefined: the high-resource mean has no interval ({no_interval_note(high_short)})"
            ).to_dict()
        elif may_be_zero(hi_est):
            out["ratio"] = Estimate(None, note=RATIO_INCLUDES_ZERO).to_dict()
        else:
            out["ratio"] = interval(lo_p / hi_p, NO_REPLICATES, no_interval_note(short)).to_dict()
        return out
    hi_est = interval(hi_p, hi_r)
    out["low_mean"] = interval(lo_p, lo_r).to_dict()
    out["high_mean"] = hi_est.to_dict()
    out["difference"] = interval(lo_p - hi_p, lo_r - hi_r).to_dict()
    if may_be_zero(hi_est):
        out["ratio"] = Estimate(None, note=RATIO_INCLUDES_ZERO).to_dict()
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            out["ratio"] = interval(lo_p / hi_p, lo_r / hi_r).to_dict()
    return out


def spearman_undefined(measure: np.ndarray) -> str | None:
    """Why a Spearman correlation across languages with resource ``measure`` (one value per language that has
    it) is undefined, else None: too few languages, or a measure that is the same for every language."""
    if len(measure) < MIN_LANGUAGES_FOR_SPEARMAN:
        return f"needs at least {MIN_LANGUAGES_FOR_SPEARMAN} languages with the measure"
    if np.ptp(measure) == 0:
        return "the measure is the same for every language"
    return None


def spearman_replicates(
    x: np.ndarray,
    y: np.ndarray,
    y_reps: np.ndarray,
    rng: np.random.Generator,
    x_reps: np.ndarray | None = None,
) -> tuple[float, np.ndarray]:
    """Spearman correlation of ``x`` and ``y`` across languages, and its two-stage bootstrap replicates.

    ``y_reps [n_lang, n_boot]`` are each language's own document-level replicates; replicate ``b`` also
    resamples the languages with replacement. ``x_reps`` (same shape), when ``x`` is itself measured (e.g. a
    task's Δaccuracy against Δbpb), resamples that side too; without it ``x`` is fixed (a resource measure).

    A replicate where either side is constant (e.g. every resampled language has the same Joshi class; with
    six languages of which five share a class that is a third of the replicates) has no rank correlation.
    It carries **0**, "no evidence of association", and stays in the interval: dropping it (as NaN) keeps
    only the resamples that contain the odd language out, which all agree with the point estimate, and
    makes the interval one-sided (a 6-language interval then excluded zero in about 30% of null
    simulations instead of at most 5%). Redrawing such a replicate would do the same (it conditions on the
    resample being informative). Counting it as 0 widens the interval towards zero by exactly the share of
    resamples that cannot tell, and keeps the false-positive rate under the null at or below 5% (tested in
    ``tests/test_intervals.py``; conservative with few, heavily tied languages, which is the honest answer).
    """
    point = float(sps.spearmanr(x, y).statistic)
    n, n_boot = len(x), y_reps.shape[1]
    # one [n_boot, n] draw: the same random stream as drawing replicate by replicate (tested)
    picks = rng.integers(0, n, (n_boot, n))
    cols = np.arange(n_boot)[:, None]
    xb = x[picks] if x_reps is None else x_reps[picks, cols]
    yb = y_reps[picks, cols]
    # Spearman = Pearson correlation of average ranks, for all replicates at once (scipy's spearmanr per
    # replicate gives the same numbers but dominated the runtime of an experiment's analysis)
    rx, ry = sps.rankdata(xb, axis=1), sps.rankdata(yb, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (rx * ry).sum(axis=1) / np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    informative = (np.ptp(xb, axis=1) > 0) & (np.ptp(yb, axis=1) > 0)
    return point, np.where(informative, np.clip(r, -1.0, 1.0), 0.0)


def correlation(
    per_lang: Sequence[LanguageStats],
    measure: Mapping[str, float | None],
    metric: str,
    rng: np.random.Generator,
) -> dict:
    """Spearman correlation across languages of ``metric`` with a resource ``measure``.

    The interval is a two-stage bootstrap: languages are resampled with replacement, and each language
    contributes its own document-level bootstrap replicate, so both sources of uncertainty are in it. No
    p-value is given: with a dozen languages the interval says more.
    """
    langs = [s for s in per_lang if measure.get(s.lang) is not None]
    out: dict = {"metric": metric, "n_languages": len(langs), "languages": [s.lang for s in langs]}
    x = np.array([measure[s.lang] for s in langs], dtype=np.float64)
    undefined = spearman_undefined(x)
    if undefined:
        out["spearman"] = Estimate(None, note=undefined).to_dict()
        return out
    y = np.array([s.estimates[metric].value for s in langs], dtype=np.float64)
    yr = np.array([s.replicates[metric] for s in langs])  # [n_lang, n_boot]
    point, reps = spearman_replicates(x, y, yr, rng)  # drawn in any case: the random stream stays the same
    short = [s.lang for s in langs if s.interval_note]
    out["spearman"] = interval(float(point), reps, no_interval_note(short) if short else None).to_dict()
    return out
