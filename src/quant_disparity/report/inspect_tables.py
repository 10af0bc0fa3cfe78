"""Markdown of ``quant-disparity inspect`` results (super_weights.json, outliers.json), from their JSON mappings."""

from __future__ import annotations

from collections.abc import Mapping

from .tables import markdown_table


def _g(v: float | None, spec: str = ".4g") -> str:
    return "—" if v is None else format(v, spec)


def super_weights_markdown(data: Mapping) -> str:
    th = data["thresholds"]
    sws = data["super_weights"]
    lines = [
        f"# Super weights: {data['model'].get('name', '?')}",
        "",
        f"- Prompt ({data['n_tokens']} tokens with the prefix token): {data['prompt']!r}",
        f"- Rule: in each MLP down-projection `y = W x`, the largest |y| (token t, output channel = row) and on that "
        f"token the largest |x| (input channel = column); a super weight W[row, column] when both are at least "
        f"{th['ratio']:g} × the block's median |y| and |x|, and W[row, column]·x[t, column] is at least "
        f"{th['min_share']:g} of y[t, row]. Found ones are zeroed and the pass repeated (at most {th['rounds']} "
        "passes); weights restored afterwards.",
        "",
    ]
    if sws:
        lines += [
            f"{len(sws)} super weight(s):",
            "",
            markdown_table(
                ["layer", "tensor", "row", "column", "value", "token", "x", "y", "share", "|y| / median", "round"],
                [
                    [
                        str(s["layer"]),
                        f"`{s['tensor']}`",
                        str(s["row"]),
                        str(s["column"]),
                        _g(s["value"]),
                        f"{s['token']} {s['token_text']!r}",
                        _g(s["input_activation"]),
                        _g(s["output_activation"]),
                        _g(s["share"], ".3f"),
                        _g(s["output_ratio"], ".0f"),
                        str(s["round"]),
                    ]
                    for s in sws
                ],
            ),
            "",
        ]
    else:
        lines += ["No super weight: no down-projection has a massive activation created by one weight.", ""]
    lines += [
        "## Every block's down-projection (first pass)",
        "",
        markdown_table(
            [
                "layer",
                "max |x|",
                "median |x|",
                "max |y|",
                "median |y|",
                "max/median |y|",
                "token, row, column",
                "share",
            ],
            [
                [
                    str(p["layer"]),
                    _g(p["max_abs_input"]),
                    _g(p["median_abs_input"]),
                    _g(p["max_abs_output"]),
                    _g(p["median_abs_output"]),
                    _g(p["max_abs_output"] / p["median_abs_output"] if p["median_abs_output"] else None, ".0f"),
                    f"{p['token']}, {p['row']}, {p['column']}",
                    _g(p["share"], ".3f"),
                ]
                for p in data["layers"]
            ],
        ),
        "",
    ]
    return "\n".join(lines)


def outliers_summary_lines(data: Mapping) -> list[str]:
    s = data["summary"]
    gauss = s["gaussian"]
    return [
        f"{s['tensors']} weight tensors; {s['tensors_with_weights_beyond_6sd']} have weights beyond 6 sd "
        f"({s['weights_beyond_6sd']:,} weights in all; a Gaussian tensor has a share of {gauss['share_beyond_6sd']:.1e}).",
        f"Share beyond 3 sd: median {100 * s['median_share_beyond_3sd']:.3f} %, largest "
        f"{100 * s['max_share_beyond_3sd']:.3f} % (Gaussian {100 * gauss['share_beyond_3sd']:.3f} %).",
        f"Excess kurtosis: median {_g(s['median_kurtosis'], '.2f')}, largest {_g(s['max_kurtosis'], '.1f')} "
        "(Gaussian 0).",
        f"max |w| / mean |w|: median {_g(s['median_max_over_mean_abs'], '.1f')}, largest "
        f"{_g(s['max_max_over_mean_abs'], '.1f')}.",
    ]


def outliers_rows(data: Mapping, limit: int | None = None) -> list[list[str]]:
    """Table rows by excess kurtosis, largest first (``limit``: only that many)."""
    rows = sorted(data["tensors"], key=lambda r: -(r["kurtosis"] if r["kurtosis"] is not None else -1e300))
    return [
        [
            f"`{r['name']}`",
            "—" if r["layer"] is None else str(r["layer"]),
            "+".join(r["components"]),
            f"{r['numel']:,}",
            f"{100 * r['share_beyond_3sd']:.3f}%",
            f"{100 * r['share_beyond_6sd']:.4f}%",
            f"{r['n_beyond_6sd']:,}",
            _g(r["kurtosis"], ".2f"),
            _g(r["max_over_mean_abs"], ".1f"),
        ]
        for r in rows[:limit]
    ]


OUTLIER_COLUMNS = (
    "tensor",
    "layer",
    "component",
    "weights",
    "> 3 sd",
    "> 6 sd",
    "n > 6 sd",
    "kurtosis",
    "max/mean |w|",
)


def outliers_markdown(data: Mapping) -> str:
    return "\n".join(
        [
            f"# Outlier structure: {data['model'].get('name', '?')}",
            "",
            "Per weight tensor, in float64 over all its elements: the share of weights farther than 3 and 6 standard "
            "deviations from the mean, the excess kurtosis, and the largest |w| over the mean |w|. Dense outliers: a "
            "share beyond 3 sd well above the Gaussian 0.27 %; sparse ones: a few weights beyond 6 sd with a huge "
            "kurtosis and max/mean.",
            "",
            *[f"- {line}" for line in outliers_summary_lines(data)],
            "",
            "Tensors by excess kurtosis, largest first:",
            "",
            markdown_table(list(OUTLIER_COLUMNS), outliers_rows(data), "lllrrrrrr"),
            "",
        ]
    )
