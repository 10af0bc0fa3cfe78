"""Per-language task statistics with paired bootstrap intervals over items, and their rank correlation with Δbpb.

A language's value of a metric is Σ num / Σ den over its items (a mean when ``den`` is one per item; the share
of in-script letters over all generated letters for language fidelity). A bootstrap replicate resamples the
items with replacement and recomputes both arms from the same resample (paired), so Δ = q - fp carries the
pairing. With fewer than :data:`~quant_disparity.analysis.stats.MIN_DOCS_FOR_INTERVAL` items a language's
numbers carry no interval, with the same note the bits-per-byte rows use.

Across languages, the Spearman correlation of Δbpb with a task's Δ resamples the languages and, within each,
its own replicate of both sides (Δbpb from the audit's documents, Δ from the task's items: different texts,
drawn independently); a replicate where either side is constant counts 0, as in the audit's resource
correlation (:func:`~quant_disparity.analysis.stats.spearman_replicates`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..analysis.stats import (
    Estimate,
    interval,
    no_interval_note,
    resample_counts,
    spearman_replicates,
    spearman_undefined,
    too_few_documents,
)
from .base import LanguageItems


@dataclass
class TaskLanguageStats:
    lang: str
    n_items: int
    estimates: dict[str, dict[str, Estimate]]  # metric -> fp / q / delta (or q alone)
    replicates: dict[str, np.ndarray]  # metric -> [n_boot] replicates of its headline number (delta, or q)
    interval_note: str | None
    #: metric -> fp / q / delta (those it has) -> [n_boot] replicates, every one from the same item resample
    arm_replicates: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out: dict = {"lang": self.lang, "n_items": self.n_items}
        for metric, ests in self.estimates.items():
            out[metric] = {k: e.to_dict() for k, e in ests.items()}
        if self.interval_note:
            out["note"] = self.interval_note
        return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


def task_language_stats(items: LanguageItems, n_boot: int, rng: np.random.Generator) -> TaskLanguageStats:
    n = len(items.item_ids)
    weights = resample_counts(n, n_boot, rng)  # one resample of the items shared by every metric and arm
    note = too_few_documents(n)
    note = note.replace("documents", "items") if note else None
    estimates: dict[str, dict[str, Estimate]] = {}
    replicates: dict[str, np.ndarray] = {}
    arm_replicates: dict[str, dict[str, np.ndarray]] = {}
    for name, m in items.metrics.items():
        point: dict[str, float] = {}
        reps: dict[str, np.ndarray] = {}
        for arm in m.arms:
            num = np.asarray(m.num[arm], dtype=np.float64)
            den = np.ones(n) if m.den is None else np.asarray(m.den[arm], dtype=np.float64)
            point[arm] = float(_ratio(num.sum(), den.sum()))
            reps[arm] = _ratio(weights @ num, weights @ den)
        ests = {arm: interval(point[arm], reps[arm], note) for arm in m.arms}
        if len(m.arms) == 2:
            reps["delta"] = reps["q"] - reps["fp"]
            ests["delta"] = interval(point["q"] - point["fp"], reps["delta"], note)
            replicates[name] = reps["delta"]
        else:
            replicates[name] = reps["q"]
        estimates[name] = ests
        arm_replicates[name] = reps
    return TaskLanguageStats(items.lang, n, estimates, replicates, note, arm_replicates)


def headline_value(stats: TaskLanguageStats, metric: str) -> Estimate:
    """The number a metric is compared across languages by: its Δ (q - fp), or its value for a q-only metric."""
    ests = stats.estimates[metric]
    return ests.get("delta", ests["q"])


def rank_correlation(
    per_lang: Sequence[TaskLanguageStats],
    metric: str,
    delta_bpb: Mapping[str, tuple[Estimate, np.ndarray, str | None]],
    rng: np.random.Generator,
) -> dict:
    """Spearman correlation across languages of Δbpb (``delta_bpb[lang] = (estimate, replicates, note)``) with
    the task's ``metric`` (its Δ, or its value when it only exists for q), with a two-stage bootstrap interval
    resampling both sides."""
    langs = [s for s in per_lang if s.lang in delta_bpb and delta_bpb[s.lang][0].value is not None]
    out: dict = {"x": "delta_bpb", "y": metric, "n_languages": len(langs), "languages": [s.lang for s in langs]}
    ys = [headline_value(s, metric).value for s in langs]
    keep = [i for i, v in enumerate(ys) if v is not None]
    langs = [langs[i] for i in keep]
    x = np.array([delta_bpb[s.lang][0].value for s in langs], dtype=np.float64)
    y = np.array([ys[i] for i in keep], dtype=np.float64)
    undefined = spearman_undefined(x) or (spearman_undefined(y) and "the task metric is the same in every language")
    if undefined:
        out["spearman"] = Estimate(None, note=undefined).to_dict()
        return out
    x_reps = np.array([delta_bpb[s.lang][1] for s in langs])
    y_reps = np.array([s.replicates[metric] for s in langs])
    point, reps = spearman_replicates(x, y, y_reps, rng, x_reps=x_reps)
    short = [s.lang for s in langs if s.interval_note or delta_bpb[s.lang][2]]
    out["spearman"] = interval(point, reps, no_interval_note(short) if short else None).to_dict()
    return out
