"""Markdown and figures of ``quant-disparity inspect neurons`` (neurons.json), from its JSON mapping."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .tables import NO_CI, fmt, markdown_table


def _short(lang: str) -> str:
    return lang.split("_")[0]


def counts_matrix(data: Mapping) -> np.ndarray:
    """``[layer, language]`` counts of own neurons."""
    return np.array([lang["own_by_layer"] for lang in data["languages"]], dtype=np.float64).T


def jaccard_matrix(data: Mapping) -> np.ndarray:
    return np.array([[np.nan if x is None else x for x in r] for r in data["overlap"]["jaccard"]], dtype=np.float64)


def _milli(est: Mapping) -> Mapping:
    """An estimate in 10⁻³ bits per byte."""
    scale = lambda v: None if v is None else 1000 * v
    ci = est.get("ci95")
    return {**est, "value": scale(est.get("value")), "ci95": None if not ci else [scale(ci[0]), scale(ci[1])]}


def protection_rows(data: Mapping) -> tuple[list[str], list[list[str]]]:
    """Rows = whose neurons are kept (per protected language: own, random, other), columns = languages; cells =
    recovered Δbpb in 10⁻³ bits per byte with its interval."""
    prot = data["protection"]
    langs = prot["evaluated"]
    headers = ["kept neurons", "n", *(_short(x) for x in langs)]
    rows = [
        ["uniform: Δbpb (damage)", "0", *(fmt(_milli(prot["languages"][x]["delta_bpb_uniform"]), 2) for x in langs)]
    ]
    for p in prot["plans"]:
        who = {"own": f"own {_short(p['row'])}", "random": f"random ({_short(p['row'])} counts)"}.get(
            p["kind"], f"{_short(p['source'])} ({_short(p['row'])} counts)"
        )
        rows.append(
            [who, str(p["neurons"]), *(fmt(_milli(prot["languages"][x]["recovered"][p["name"]]), 2) for x in langs)]
        )
    return headers, rows


def difference_rows(data: Mapping) -> tuple[list[str], list[list[str]]]:
    prot = data["protection"]
    langs = prot["evaluated"]
    rows = []
    for row in prot["rows"]:
        if row in prot["skipped"]:
            continue
        for k in ("own-random", "own-other"):
            cells = [fmt(_milli(prot["languages"][x]["differences"][row][k]), 2) for x in langs]
            rows.append([f"{_short(row)}: {k}", *cells])
    return ["difference", *(_short(x) for x in langs)], rows


def neurons_markdown(data: Mapping) -> str:
    th = data["thresholds"]
    langs = data["languages"]
    lines = [
        f"# Language-specific neurons (LAPE): {data['model'].get('name', '?')}",
        "",
        f"- Fires: {data['method']['fires']}.",
        f"- Tokens: {data['method']['tokens']}; selection split of {data['corpus']['name']}.",
        f"- Selection: {data['method']['lape']}.",
        f"- Here: t = {th['activation_threshold']:.4f}; {th['candidates']} of {th['neurons']} neurons are candidates; "
        f"{th['selected']} selected (entropy ≤ {th['entropy_cutoff'] if th['entropy_cutoff'] is None else format(th['entropy_cutoff'], '.4f')}"
        f" nats; maximum ln {len(langs)} = {th['max_entropy']:.3f}).",
        "",
        "## Own neurons per language",
        "",
        markdown_table(
            ["language", "selection docs", "tokens", "own neurons", "mean firing (all layers)"],
            [
                [
                    lang["id"] + (f" {NO_CI}" if "note" in lang else ""),
                    str(lang["selection_docs"]),
                    str(lang["selection_tokens"]),
                    str(lang["own_count"]),
                    f"{np.mean(lang['mean_firing_by_layer']):.3f}",
                ]
                for lang in langs
            ],
        ),
        "",
    ]
    if any("note" in lang for lang in langs):
        lines += [
            f"{NO_CI} fewer selection documents than an interval needs: its probabilities rest on few documents.",
            "",
        ]
    counts = counts_matrix(data)
    lines += [
        "## Own neurons by layer",
        "",
        markdown_table(
            ["layer", *(_short(lang["id"]) for lang in langs)],
            [[str(layer), *(str(int(v)) for v in counts[i])] for i, layer in enumerate(data["layers"])],
        ),
        "",
        "## Overlap (Jaccard of the own-neuron sets)",
        "",
        markdown_table(
            ["", *(_short(lang["id"]) for lang in langs)],
            [
                [_short(lang["id"]), *("—" if np.isnan(v) else f"{v:.2f}" for v in row)]
                for lang, row in zip(langs, jaccard_matrix(data))
            ],
        ),
        "",
    ]
    if "protection" in data:
        prot = data["protection"]
        h, rows = protection_rows(data)
        lines += [
            f"## Protection under {prot['scheme']} (held-out split: per language whole documents up to "
            f"{prot['heldout_max_tokens'] or 'all'} tokens, at least {prot['heldout_min_docs']} documents)",
            "",
            "Cells: damage recovered, bpb(uniform) − bpb(plan), in 10⁻³ bits per byte with its 95% paired bootstrap "
            "interval; the first row is the uniform plan's own damage (Δbpb vs the reference). Each row keeps as many "
            "neurons per layer as the protected language's own set; plans of one language have equal bits.",
            "",
            markdown_table(h, rows),
            "",
        ]
        h, rows = difference_rows(data)
        if rows:
            lines += ["Paired differences of recovered damage (10⁻³ bits per byte):", "", markdown_table(h, rows), ""]
        lines += [
            markdown_table(
                ["plan", "neurons", "overlap with own", "bits per weight", "note"],
                [
                    [
                        p["name"],
                        str(p["neurons"]),
                        str(p["overlap_with_own"]),
                        f"{p['bits_per_weight']:.6f}",
                        p.get("note", ""),
                    ]
                    for p in prot["plans"]
                ],
                "lrrrl",
            ),
            "",
        ]
        if prot["skipped"]:
            lines += ["Not protected: " + "; ".join(f"{k}: {v}" for k, v in prot["skipped"].items()), ""]
    return "\n".join(lines)


def neuron_figures(data: Mapping) -> dict[str, object]:
    from . import plots

    names = [_short(lang["id"]) for lang in data["languages"]]
    layers = [f"L{x}" for x in data["layers"]]
    by_layer = plots.heatmap(
        counts_matrix(data),
        layers,
        names,
        "language-specific neurons per layer (LAPE)",
        "neurons",
        annotate=True,
        sequential=True,
        value_format=".0f",
    )
    overlap = plots.heatmap(
        jaccard_matrix(data),
        names,
        names,
        "overlap of own-neuron sets",
        "Jaccard",
        annotate=True,
        sequential=True,
        value_format=".2f",
    )
    return {"neurons_by_layer.png": by_layer, "overlap.png": overlap}
