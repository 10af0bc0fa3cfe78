"""The pieces of a search result a reader sees: search.md (the frontier table) and pareto.png."""

from __future__ import annotations

import html
from collections.abc import Mapping

import numpy as np

from .plots import plt
from .tables import fmt, markdown_table


def _name(row: Mapping) -> str:
    return row["name"] if row["kind"] != "structural" else f"{row['name']} (structural)"


def frontier_rows(data: Mapping) -> tuple[list[str], list[list[str]]]:
    """The frontier table: every evaluated plan in order of bits, its effective bits two ways and its damage."""
    obj = data["objective"]["name"]
    rows = []
    for r in sorted(data["table"], key=lambda r: (r["bits_per_universe_weight"], r["name"])):
        rows.append(
            [
                _name(r),
                f"{r['bits_per_universe_weight']:.3f}",
                f"{r['bits_per_model_weight']:.3f}",
                f"{r['model_bytes'] / 2**20:.1f}",
                fmt(r["worst"], 2, pct=True) + f" ({r['worst']['lang']})",
                fmt(r["mean"], 2, pct=True),
                fmt(r["objective"], 2, pct=True),
            ]
        )
    return ["plan", "bits/w (universe)", "bits/w (model)", "MiB", "worst rel. Δbpb", "mean rel. Δbpb", obj], rows


def search_markdown(data: Mapping) -> str:
    """The frontier: every evaluated plan, its effective bits two ways, and its held-out damage."""
    obj = data["objective"]["name"]
    cfg = data["config"]
    lines = [
        f"# search: {data['model']['name']}, base {data['scheme']}, protect = {data['protect']}, "
        f"units by {cfg['granularity']}, objective {obj}",
        "",
        f"Objective `{obj}`: {data['objective']['definition']} (relative Δbpb, in %). Chosen on "
        f"{data['documents']['selection_tokens']} selection tokens, evaluated on {data['documents']['heldout_tokens']} "
        "held-out tokens (other documents); 95% paired bootstrap intervals over held-out documents.",
        "",
        f"Bits per weight: *universe* = over the quantized universe ({data['universe']['tensors']} tensors, "
        f"{data['universe']['params']:,} weights; the base scheme alone costs "
        f"{data['universe']['base_bits_per_weight']:.3f}); *model* = over every parameter, kept tensors at their "
        "stored width (fp32 = 32 bits).",
        "",
    ]
    lines.append(markdown_table(*frontier_rows(data)))
    lines.append("")
    for p in data["points"]:
        v = p["versus_uniform"]
        lines.append(
            f"- budget {p['budget']:g} ({p['budget_kind']}): protects {', '.join(p['units']) or 'nothing'} "
            f"(found by {p['found_by']}; selection {obj}: estimated {100 * p['selection']['estimated_objective']:.2f}%, "
            f"measured {100 * p['selection']['measured_objective']:.2f}%); vs {v['uniform']} "
            f"({v['uniform_bits_per_universe_weight']:.3f} bits): worst-language difference "
            f"{fmt(v['worst_difference'], 2, pct=True, sign=True)}, ratio {fmt(v['worst_ratio'], 3)}"
            + (
                ""
                if "target" not in p
                else f"; target {p['target']['value']:g} {'reached' if p['target']['reached'] else 'out of reach'}"
            )
        )
    for label, note in data.get("structural_notes", {}).items():
        lines.append(f"- {label}: {note}")
    return "\n".join(lines) + "\n"


def pareto_figure(data: Mapping):
    """Effective bits per universe weight against the held-out worst-language and mean relative Δbpb (95%
    intervals): searched plans as a line, uniform schemes and structural plans as markers."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    styles = {"searched": ("o-", "#b2182b"), "uniform": ("s", "#2166ac"), "structural": ("^", "#4d9221")}
    for ax, key, label in ((axes[0], "worst", "worst-language"), (axes[1], "mean", "mean")):
        for kind, (marker, color) in styles.items():
            rows = sorted((r for r in data["table"] if r["kind"] == kind), key=lambda r: r["bits_per_universe_weight"])
            if not rows:
                continue
            x = np.array([r["bits_per_universe_weight"] for r in rows])
            y = np.array([100 * (r[key]["value"] if r[key]["value"] is not None else np.nan) for r in rows])
            ci = [r[key].get("ci95") for r in rows]
            lo = np.array([100 * c[0] if c else np.nan for c in ci])
            hi = np.array([100 * c[1] if c else np.nan for c in ci])
            ax.errorbar(x, y, yerr=np.vstack([y - lo, hi - y]), fmt=marker, color=color, capsize=2, label=kind)
            if kind != "searched":
                for xi, yi, r in zip(x, y, rows):
                    ax.annotate(
                        r["name"].replace("uniform ", ""),
                        (xi, yi),
                        fontsize=6,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_xlabel("effective bits per weight (quantized universe)")
        ax.set_ylabel(f"{label} relative Δbpb, held-out (%)")
        ax.legend(fontsize=7)
    fig.suptitle(
        f"{data['model']['name']} · base {data['scheme']} · protect {data['protect']} · 95% intervals", fontsize=10
    )
    return fig


def search_html(data: Mapping) -> str:
    """A self-contained HTML page of a ``search`` result: its notes, the frontier table and the Pareto figure."""
    from .experiment import _CSS, _html_table, _png

    md = search_markdown(data).splitlines()
    intro = "".join(f"<p>{html.escape(ln)}</p>" for ln in md[2:] if ln and not ln.startswith(("|", "- ")))
    notes = "".join(f"<li>{html.escape(ln[2:])}</li>" for ln in md if ln.startswith("- "))
    fig = pareto_figure(data)
    title = md[0].lstrip("# ")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)} — quant-disparity report</title>
<style>{_CSS}</style></head><body>
<h1>{html.escape(title)}</h1>{intro}
<h2>Frontier (held-out)</h2>{_html_table(*frontier_rows(data))}
<ul>{notes}</ul>
<h2>Figures</h2><figure><img alt='pareto.png' src='data:image/png;base64,{_png(fig)}'>
<figcaption>pareto.png: effective bits per weight against the worst-language and mean damage</figcaption></figure>
</body></html>
"""
