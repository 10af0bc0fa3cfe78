"""Figures from stored results (matplotlib, Agg backend). Each function returns a Figure; callers save it."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from collections.abc import Mapping
from typing import cast

import matplotlib.pyplot as plt
import numpy as np

from ..analysis.records import LocateResult


def heatmap(
    matrix: np.ndarray,
    rows: list[str],
    cols: list[str],
    title: str,
    cbar_label: str,
    annotate: bool | None = None,
    *,
    sequential: bool = False,
    value_format: str = ".1f",
):
    """Rows x columns heat map with a diverging colour scale centred on zero (``sequential``: from zero up, for
    non-negative values such as counts; cells annotated with ``value_format``)."""
    h = max(3.0, 0.32 * len(rows) + 1.6)
    w = max(4.5, 0.75 * len(cols) + 2.2)
    fig, ax = plt.subplots(figsize=(w, h), layout="constrained")
    finite = matrix[np.isfinite(matrix)]
    lim = float(np.max(np.abs(finite))) if finite.size else 1.0
    cmap, vmin = ("Reds", 0.0) if sequential else ("RdBu_r", -lim)
    im = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=cbar_label, shrink=0.8)
    if annotate if annotate is not None else matrix.size <= 400:
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                v = matrix[i, j]
                if np.isfinite(v):
                    ax.text(
                        j,
                        i,
                        format(v, value_format),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if abs(v) > 0.6 * lim else "black",
                    )
    return fig


def bars_by_group(
    groups: dict[str, tuple[list[str], np.ndarray, np.ndarray, np.ndarray]], title: str, ylabel: str, ncols: int = 4
):
    """Small multiples: one panel per group (e.g. language), bars with 95% CI error bars.

    ``groups[name] = (labels, values, lo, hi)``.
    """
    n = len(groups)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    n_bars = max(len(v[0]) for v in groups.values())
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(max(3.2, 0.22 * n_bars + 1.2) * ncols, 2.6 * nrows),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for ax, (name, (labels, values, lo, hi)) in zip(axes.flat, groups.items()):
        x = np.arange(len(labels))
        err = np.vstack([values - lo, hi - values])
        colors = ["#b2182b" if v >= 0 else "#2166ac" for v in values]
        ax.bar(x, values, color=colors, yerr=err, capsize=1.5, error_kw={"elinewidth": 0.6})
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_title(name, fontsize=9)
        ax.set_xticks(x, labels, rotation=90, fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def panel_heatmaps(
    panels: Mapping[str, np.ndarray], rows: list[str], cols: list[str], title: str, cbar_label: str, ncols: int = 4
):
    """Small multiples of non-negative ``rows x columns`` matrices (e.g. layers x heads), one panel per name
    (e.g. language), on one shared sequential colour scale."""
    n = len(panels)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(max(2.4, 0.35 * len(cols) + 1.2) * ncols + 1.0, max(2.2, 0.16 * len(rows) + 1.0) * nrows),
        squeeze=False,
        layout="constrained",
    )
    finite = [m[np.isfinite(m)] for m in panels.values()]
    vals = np.concatenate(finite) if finite else np.zeros(0)
    lim = float(vals.max()) if vals.size and vals.max() > 0 else 1.0
    im = None
    for ax, (name, m) in zip(axes.flat, panels.items()):
        im = ax.imshow(m, cmap="Reds", vmin=0.0, vmax=lim, aspect="auto")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(cols)), cols, fontsize=6)
        step = max(1, len(rows) // 10)
        ax.set_yticks(range(0, len(rows), step), rows[::step], fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes, label=cbar_label, shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return fig


def locate_figures(data: LocateResult | Mapping) -> dict[str, object]:
    """The figures of a locate sweep by file name: ``heatmap.png`` (effect by unit and language) and ``bars.png``
    (one panel per language, the units' effects with their 95% intervals)."""
    res = data if isinstance(data, LocateResult) else LocateResult.from_dict(data)
    units, lang_ids, m = res.effect_matrix()
    verb = "recovered by protecting" if res.mode == "protect-one" else "caused by quantizing only"
    heat = heatmap(
        m,
        units,
        lang_ids,
        f"{res.model['name']} · {res.scheme['name']} · damage {verb} each unit",
        "% of reference bpb",
    )
    groups = {}
    for j, lang in enumerate(lang_ids):
        effects = [res.results[lang].units[u].effect for u in units]
        ci = np.array([[np.nan, np.nan] if e.lo is None else [100 * e.lo, 100 * cast(float, e.hi)] for e in effects])
        groups[lang] = (units, m[:, j], ci[:, 0], ci[:, 1])
    bars = bars_by_group(groups, f"damage {verb} each unit (95% CI)", "% of ref. bpb")
    return {"heatmap.png": heat, "bars.png": bars}


def save(fig, path) -> None:
    """Save ``fig`` as a PNG atomically (rendered in memory, then written with a temporary name and renamed)."""
    import io

    from .._io import atomic_write_bytes

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=130)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
