"""Markdown, figures and the HTML page of ``quant-disparity inspect heads`` (heads.json), from its JSON mapping."""

from __future__ import annotations

import html
from collections.abc import Mapping

import numpy as np

from .tables import fmt, markdown_table

#: Specific heads named per language in the markdown (heads.json lists them all).
SHOWN = 12


def _short(lang: str) -> str:
    return lang.split("_")[0]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def specificity_matrix(lang: Mapping) -> np.ndarray:
    """``[layer, head]`` specificity score (largest |d|) of one language."""
    return np.array([[np.nan if x is None else x for x in row] for row in lang["specificity"]], dtype=np.float64)


def share_rows(data: Mapping) -> tuple[list[str], list[list[str]]]:
    """Per language: documents, queries, share of heads specific (any statistic and per statistic), and the
    false-positive share of its half split."""
    stats = list(data["languages"][0]["statistics"]) if data["languages"] else []
    fp = {r["id"]: r for r in data["false_positive"]["languages"]}
    headers = ["language", "docs", "queries", "specific heads", *stats, "half-split (false positives)"]
    rows = []
    for lang in data["languages"]:
        mark = " †" if lang.get("note") else ""
        share = lang["share_specific"]
        rows.append(
            [
                lang["id"] + mark,
                str(lang["selection_docs"]),
                str(lang["queries"]),
                "—" if share is None else f"{lang['n_specific']} ({_pct(share)})",
                *(_pct(lang["statistics"][s]["share_specific"]) for s in stats),
                _pct(fp[lang["id"]]["share_specific"]),
            ]
        )
    return headers, rows


def prediction_rows(data: Mapping) -> tuple[list[str], list[list[str]]]:
    pred = data["prediction"]
    rows = []
    for r in pred["languages"]:
        if "note" in r:
            rows.append([r["id"], "—", "—", "—", r["note"]])
            continue
        rows.append(
            [
                r["id"],
                str(r["specificity"]["n_heads"]),
                fmt(r["specificity"]["spearman"], 2, sign=True),
                fmt(r["weight_error"]["spearman"], 2, sign=True),
                "",
            ]
        )
    return ["language", "heads", "ρ(specificity, protect-one effect)", "ρ(weight error, effect)", "note"], rows


def heads_markdown(data: Mapping) -> str:
    m, att = data["method"], data["attention"]
    fp = data["false_positive"]
    lines = [
        f"# Language-specific attention heads: {data['model'].get('name', '?')}",
        "",
        f"- {att['n_heads']} query heads, {att['n_kv_heads']} key/value heads per block, {len(data['layers'])} blocks;"
        f" probabilities from the {att['implementation']} attention implementation."
        + (f" {att['note'][:1].upper()}{att['note'][1:]}." if att.get("note") else ""),
        f"- Queries: {m['queries']}.",
        f"- Statistics: entropy {m['entropy']}; sink: {m['sink']}; distance: {m['distance']}; same script: "
        f"{m['same_script']}. Aggregate: {m['aggregate']}.",
        f"- Specificity: {m['specificity']}. Specific: {m['specific']}. Score: {m['score']}.",
        f"- False-positive check: {m['false_positive_check']}; mean share of heads it calls specific "
        f"{_pct(fp['mean_share'])}, largest {_pct(fp['max_share'])}.",
        f"- Scripts met: {', '.join(data['scripts']) or 'none'}. Corpus {data['corpus']['name']}, "
        f"split {data['corpus']['split']}. † too few documents for an interval: no head called specific.",
        "",
        "## Share of heads specific to each language",
        "",
        markdown_table(*share_rows(data)),
        "",
    ]
    for lang in data["languages"]:
        names = lang["specific_heads"]
        if names:
            more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
            lines.append(f"- {lang['id']}: {', '.join(names[:SHOWN])}{more}")
    if "prediction" in data:
        pred = data["prediction"]
        loc = pred["locate"]
        lines += [
            "",
            "## Does specificity predict the protect-one effect?",
            "",
            f"Locate run {loc['path']} ({loc['model']}, {loc['scheme']}, split {loc['split']}). {pred['method']}.",
            "",
            markdown_table(*prediction_rows(data)),
        ]
    return "\n".join(lines) + "\n"


def heads_figures(data: Mapping) -> dict[str, object]:
    """``heads_specificity.png``: layers x heads, one panel per language, the specificity score."""
    from . import plots

    panels = {_short(lang["id"]): specificity_matrix(lang) for lang in data["languages"]}
    n_heads = data["attention"]["n_heads"]
    fig = plots.panel_heatmaps(
        panels,
        [f"L{x}" for x in data["layers"]],
        [f"h{h}" for h in range(n_heads)],
        f"{data['model'].get('name', '?')}: head specificity per language (largest |d| over the statistics)",
        "|d|",
    )
    return {"heads_specificity.png": fig}


def heads_html(data: Mapping) -> str:
    """A self-contained HTML page of an ``inspect heads`` result (its tables and figure)."""
    from .experiment import _CSS, _html_table, _png

    figs = "".join(
        f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{_png(fig)}'>"
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
        for name, fig in heads_figures(data).items()
    )
    md = heads_markdown(data)
    notes = "".join(f"<li>{html.escape(ln[2:])}</li>" for ln in md.splitlines() if ln.startswith("- ") and ":" in ln)
    pred = ""
    if "prediction" in data:
        pred = "<h2>Does specificity predict the protect-one effect?</h2>" + _html_table(*prediction_rows(data))
    title = f"Language-specific attention heads: {data['model'].get('name', '?')}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)} — quant-disparity report</title>
<style>{_CSS}</style></head><body>
<h1>{html.escape(title)}</h1><ul>{notes}</ul>
<h2>Share of heads specific to each language</h2>{_html_table(*share_rows(data))}
{pred}
<h2>Figures</h2>{figs}
</body></html>
"""
