"""Aggregation, paired bootstrap confidence intervals, disparity and correlation; the records of results."""

from .stats import (
    LANG_METRICS,
    LN2,
    MIN_DOCS_FOR_INTERVAL,
    Estimate,
    LanguageStats,
    correlation,
    disparity,
    interval,
    language_metrics,
    language_stats,
    may_be_zero,
    resample_counts,
    spearman_undefined,
)

__all__ = [
    "LANG_METRICS",
    "LN2",
    "MIN_DOCS_FOR_INTERVAL",
    "Estimate",
    "LanguageStats",
    "correlation",
    "disparity",
    "interval",
    "language_metrics",
    "language_stats",
    "may_be_zero",
    "resample_counts",
    "spearman_undefined",
]
