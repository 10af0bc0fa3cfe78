"""Do cheap scores predict measured damage? Rank correlation of each score with a ``locate`` sweep's effect.

Per language, across the units both share: Spearman's rho between a score and the unit's measured effect
(:func:`..analysis.stats.spearman_replicates`), with a 95% percentile interval from resampling the *units*
with replacement. A locate output stores each unit's effect with an interval, not its bootstrap replicates,
so the measurement noise of the effects is not in this interval (it is the units' sampling variation only).
The column ``all`` correlates with the mean effect over the languages (a per-language score: its mean too).
``top3`` is the share of the measured three most helpful units among the score's top three.
``sqnr_db`` is higher for *less* error: a score that predicts damage correlates negatively there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..analysis.stats import Estimate, interval, spearman_replicates

ALL = "all"
TOP = 3


def _top(values: Mapping[str, float], k: int) -> set[str]:
    return set(sorted(values, key=lambda u: (-values[u], u))[:k])


def rank_agreement(
    score: Mapping[str, float], measured: Mapping[str, float], rng: np.random.Generator, n_boot: int, k: int = TOP
) -> dict:
    """Spearman's rho of ``score`` with ``measured`` over their common units (interval: units resampled), and
    the share of ``measured``'s top ``k`` in ``score``'s top ``k``."""
    units = [u for u in measured if u in score and np.isfinite(score[u]) and measured[u] is not None]
    out: dict = {"n_units": len(units)}
    if len(units) < 3:
        out["spearman"] = Estimate(None, note="needs at least 3 units").to_dict()
        return out
    x = np.array([score[u] for u in units], dtype=np.float64)
    y = np.array([measured[u] for u in units], dtype=np.float64)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        out["spearman"] = Estimate(None, note="a side is the same for every unit").to_dict()
    else:
        point, reps = spearman_replicates(x, y, np.repeat(y[:, None], n_boot, axis=1), rng)
        out["spearman"] = interval(point, reps).to_dict()
    kk = min(k, len(units))
    out[f"top{k}_overlap"] = len(_top(dict(zip(units, x)), kk) & _top(dict(zip(units, y)), kk)) / kk
    return out


def prediction_table(
    weights: Mapping[str, Mapping[str, float]],
    per_lang: Mapping[str, Mapping[str, Mapping[str, float]]],
    measured: Mapping[str, Mapping[str, float]],
    *,
    seed: int = 0,
    n_boot: int = 1000,
) -> dict:
    """``weights[score][unit]`` (the same for every language), ``per_lang[lang][score][unit]`` and
    ``measured[lang][unit]``: ``{score: {lang | "all": rank_agreement}}``, languages in ``measured``'s order."""
    rng = np.random.default_rng(seed)
    langs = list(measured)
    names = list(weights) + [n for n in next(iter(per_lang.values()), {}) if n not in weights]
    units = list(next(iter(measured.values()), {}))
    mean_measured = {u: float(np.mean([measured[g][u] for g in langs])) for u in units}
    table: dict = {}
    for name in names:
        row: dict = {}
        for lang in langs:
            score = weights[name] if name in weights else per_lang[lang][name]
            row[lang] = rank_agreement(score, measured[lang], rng, n_boot)
        if name in weights:
            pooled = dict(weights[name])
        else:
            pooled = {u: float(np.mean([per_lang[g][name][u] for g in langs])) for u in units}
        row[ALL] = rank_agreement(pooled, mean_measured, rng, n_boot)
        table[name] = row
    return table


def _cell(r: dict) -> str:
    s = r["spearman"]
    if s.get("value") is None:
        return "—"
    lo, hi = s["ci95"]
    return f"{s['value']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def prediction_markdown(table: Mapping[str, Mapping[str, dict]], title: str, langs: Sequence[str]) -> str:
    cols = [*langs, ALL]
    lines = [
        f"## {title}",
        "",
        "Spearman's rho of each score with the measured per-unit effect, 95% interval over units resampled.",
        "",
        "| score | " + " | ".join(cols) + f" | top-{TOP} overlap ({ALL}) |",
        "|---|" + "---:|" * (len(cols) + 1),
    ]
    for name, row in table.items():
        top = row[ALL].get(f"top{TOP}_overlap")
        lines.append(
            f"| {name} | " + " | ".join(_cell(row[c]) for c in cols) + f" | {'—' if top is None else f'{top:.0%}'} |"
        )
    return "\n".join(lines) + "\n"
