"""Aggregation, paired bootstrap confidence intervals, disparity and correlation."""

from .stats import (
    LANG_METRICS, Estimate, LanguageStats, correlation, disparity, language_stats, resample_counts,
)

__all__ = [
    "LANG_METRICS", "Estimate", "LanguageStats", "correlation", "disparity", "language_stats", "resample_counts",
]
