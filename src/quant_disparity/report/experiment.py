"""Reports of a study from its analysed results: markdown, LaTeX (booktabs) and a self-contained HTML page.

Every number is read from ``experiments.results.analyse`` output, which is computed from the store; the
functions take that mapping (as results.json holds it) and read it through
:class:`..analysis.records.StudyResult`.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping
from typing import cast

import numpy as np

from ..analysis.records import StudyResult, TrialResult, Verdict
from ..analysis.stats import MIN_DOCS_FOR_INTERVAL, Estimate
from .tables import NO_CI, fmt, markdown_table, no_interval_footnote


# -- shared pieces -------------------------------------------------------------------------------------------------
def _study(result: StudyResult | Mapping) -> StudyResult:
    return result if isinstance(result, StudyResult) else StudyResult.from_dict(result)


def _pct(est: Estimate) -> float:
    """100 x an estimate's value for a figure; NaN only when it is undefined (0.0 stays 0.0)."""
    return np.nan if est.value is None else 100 * est.value


def _rel_delta(t: TrialResult, lang: str | None) -> Estimate:
    return t.languages[cast(str, lang)].estimates["rel_delta_bpb"]


def trial_rows(result: StudyResult | Mapping) -> list[list[str]]:
    rows = []
    for t in _study(result).trials:
        c = t.cost
        s = t.summary
        rows.append(
            [
                t.model,
                t.scheme or "—",
                t.plan_name,
                f"{c.get('bits_per_weight', float('nan')):.2f}",
                f"{100 * c.get('protected_fraction', 0):.1f}%",
                fmt(s["mean_rel_delta"], 1, pct=True, sign=True),
                f"{t.worst_language} {fmt(_rel_delta(t, t.worst_language), 1, pct=True, sign=True)}",
                fmt(s["gap"], 1, pct=True, sign=True),
                fmt(s["disparity"], 2) + (" (undefined)" if s["disparity"].note else ""),
            ]
        )
    return rows


TRIAL_HEADERS = [
    "model",
    "scheme",
    "plan",
    "bits/weight",
    "protected",
    "mean rel. Δbpb",
    "worst language",
    "low − high gap",
    "disparity (low/high)",
]
VERDICT_HEADERS = [
    "claim",
    "instance",
    "left [95% CI]",
    "right [95% CI]",
    "left − right [95% CI]",
    "verdict",
    "family-wise (Holm)",
]


def _verdict(v: Verdict | Mapping) -> Verdict:
    return v if isinstance(v, Verdict) else Verdict.from_dict(v)


def familywise_cell(v: Verdict | Mapping) -> str:
    """The Holm family-wise verdict with its adjusted p, or why there is none (point-value verdicts)."""
    v = _verdict(v)
    if v.verdict_familywise is None:
        return "n/a (point values)" if "point values" in v.basis else "—"
    return f"{v.verdict_familywise} (p {v.p_holm:.3g})"


def verdict_cell(v: Verdict | Mapping) -> str:
    v = _verdict(v)
    return v.verdict + (" (point values)" if "point values" in v.basis else "")


def verdict_rows(result: StudyResult | Mapping, digits: int = 3) -> list[list[str]]:
    rows = []
    for v in _study(result).verdicts:
        inst = ", ".join(f"{k}={val}" for k, val in v.instance.items()) or "—"
        rows.append(
            [
                f"{v.id}: {v.expr}",
                inst,
                fmt(v.left, digits),
                fmt(v.right, digits),
                fmt(v.difference, digits, sign=True),
                verdict_cell(v),
                familywise_cell(v),
            ]
        )
    return rows


def short_languages(result: StudyResult | Mapping) -> list[str]:
    """``"lang (n docs)"`` for languages with too few documents for an interval in some trial."""
    out: dict[str, int] = {}
    for t in _study(result).trials:
        for lang, v in t.languages.items():
            n_docs = cast(int, v.n_docs)  # a study's results record every language's documents
            if n_docs < MIN_DOCS_FOR_INTERVAL:
                out.setdefault(lang, n_docs)
    return [f"{lang} ({n} docs)" for lang, n in out.items()]


def method_notes(result: StudyResult | Mapping) -> list[str]:
    """How the verdicts were reached (basis, family-wise rule) and which languages have no interval."""
    result = _study(result)
    spec = result.spec
    notes = []
    if spec.get("verdict_basis") == "points":
        notes.append(
            'Verdicts compare point values (verdict_basis = "points": nothing to resample); no '
            "intervals and no family-wise verdict."
        )
    elif result.verdicts:
        notes.append(
            f"Family-wise verdicts: Holm–Bonferroni step-down over all {len(result.verdicts)} claim "
            "instances of the run at α = 0.05, on two-sided bootstrap z-test p-values of left − right = 0 "
            "(bootstrap standard error; p shown Holm-adjusted); supported/refuted only when Holm rejects "
            "and the interval agrees."
        )
    short = short_languages(result)
    if short and spec.get("verdict_basis") != "points":
        notes.append(no_interval_footnote(short))
    return notes


def task_tables(result: StudyResult | Mapping) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per task and headline metric of a spec with [tasks]: (caption, headers, rows); a row per trial, a column per
    language (the metric's Δ, q - fp, or its value for a metric that compares q with fp already), and the
    Spearman correlation of Δbpb with it across languages."""
    result = _study(result)
    langs = result.language_ids
    out = []
    tasks = list(dict.fromkeys(t["task"] for t in result.tasks))
    for task in tasks:
        runs = [t for t in result.tasks if t["task"] == task]
        for metric in runs[0]["headline"]:
            first = runs[0]["languages"][0][metric]
            delta = "delta" in first
            rows = []
            for run in runs:
                by_lang = {x["lang"]: x for x in run["languages"]}
                cells = [
                    fmt(by_lang[x][metric]["delta" if delta else "q"], 3, sign=delta) if x in by_lang else "—"
                    for x in langs
                ]
                rows.append([run["trial"], *cells, fmt(run["spearman_with_delta_bpb"].get(metric), 2, sign=True)])
            chance = f"; chance {runs[0]['chance']:.0%}" if runs[0].get("chance") else ""
            what = f"Δ{metric} (quantized − reference)" if delta else f"{metric} (quantized against reference)"
            caption = f"{task}: {what}, 95% paired bootstrap intervals over items{chance}"
            out.append((caption, ["trial", *langs, "ρ(Δbpb, ·)"], rows))
    return out


def summary_markdown(result: StudyResult | Mapping) -> str:
    result = _study(result)
    spec = result.spec
    g = result.groups
    lines = [
        f"# {spec['name']}",
        "",
        spec["description"] or "",
        "",
        f"- Corpus `{spec['corpus']['name']}`, split `{spec['corpus']['split']}`, {len(result.languages)} languages, "
        f"up to {spec['corpus']['max_tokens'] or 'all'} tokens per language"
        + (f" (at least {spec['corpus']['min_docs']} documents each)" if spec["corpus"].get("min_docs", 1) > 1 else "")
        + (", first sentence of each document" if spec["corpus"].get("first_sentence") else "")
        + ".",
        f"- Low-resource: {', '.join(g['low']) or '—'}; high-resource: {', '.join(g['high']) or '—'} ({g['rule']}).",
        f"- 95% paired bootstrap intervals over documents ({spec['n_boot']} replicates, seed {spec['seed']}); "
        "disparity is undefined when the high-resource mean's interval includes zero.",
        "",
        "## Trials",
        "",
        markdown_table(TRIAL_HEADERS, trial_rows(result), "llllrrrrr"),
        "",
    ]
    if result.verdicts:
        lines += ["## Claims", "", markdown_table(VERDICT_HEADERS, verdict_rows(result), "llrrrll"), ""]
    tables = task_tables(result)
    if tables:
        lines += ["## Tasks", ""]
        for caption, headers, rows in tables:
            lines += [f"{caption}:", "", markdown_table(headers, rows, "l" + "r" * (len(headers) - 1)), ""]
    notes = method_notes(result)
    if notes:
        lines += [*(f"- {n}" for n in notes), ""]
    return "\n".join(lines)


# -- LaTeX ---------------------------------------------------------------------------------------------------------
_TEX = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
    "Δ": r"$\Delta$",
    "−": "--",
    "≤": r"$\le$",
    NO_CI: r"$^\dagger$",
    "α": r"$\alpha$",
    "–": "--",
}


def tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def latex_table(headers: list[str], rows: list[list[str]], align: str, caption: str, label: str) -> str:
    body = "\n".join("    " + " & ".join(tex(c) for c in row) + r" \\" for row in rows)
    return "\n".join(
        [
            r"\begin{table}[t]",
            r"  \centering",
            r"  \small",
            rf"  \begin{{tabular}}{{{align}}}",
            r"    \toprule",
            "    " + " & ".join(tex(h) for h in headers) + r" \\",
            r"    \midrule",
            body,
            r"    \bottomrule",
            r"  \end{tabular}",
            rf"  \caption{{{tex(caption)}}}",
            rf"  \label{{{label}}}",
            r"\end{table}",
            "",
        ]
    )


def latex_report(result: StudyResult | Mapping) -> str:
    result = _study(result)
    name = result.spec["name"]
    label = re.sub(r"[^A-Za-z0-9]+", "-", name)
    parts = [f"% quant-disparity report for {name}; requires \\usepackage{{booktabs}}", ""]
    parts.append(
        latex_table(
            TRIAL_HEADERS,
            trial_rows(result),
            "llllrrrrr",
            f"{name}: trials (95% bootstrap CIs over documents).",
            f"tab:{label}-trials",
        )
    )
    first = result.trials[0]
    lang_rows = [
        [
            lang,
            fmt(e["bpb_fp"], 3).split(" [")[0],
            fmt(e["delta_bpb"], 3, sign=True),
            fmt(e["rel_delta_bpb"], 1, pct=True, sign=True),
            fmt(e["kl_bits"], 3),
        ]
        for lang, e in ((lang, v.estimates) for lang, v in first.languages.items())
    ]
    parts.append(
        latex_table(
            ["language", "bpb ref.", "Δbpb", "rel. Δbpb", "KL bits/token"],
            lang_rows,
            "lrrrr",
            f"{name}: per-language damage of {first.name}.",
            f"tab:{label}-languages",
        )
    )
    notes = " ".join(method_notes(result))
    if result.verdicts:
        parts.append(
            latex_table(
                VERDICT_HEADERS,
                verdict_rows(result),
                "llrrrll",
                f"{name}: claims and verdicts. {notes}".strip(),
                f"tab:{label}-claims",
            )
        )
    elif notes:
        parts.append(f"% {notes}")
    for i, (caption, headers, rows) in enumerate(task_tables(result)):
        parts.append(
            latex_table(headers, rows, "l" + "r" * (len(headers) - 1), f"{name}: {caption}.", f"tab:{label}-task{i}")
        )
    return "\n".join(parts)


# -- figures -------------------------------------------------------------------------------------------------------
def _png(fig) -> str:
    from . import plots

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plots.plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def figure_bars(result: StudyResult | Mapping, max_trials: int = 6):
    from . import plots

    result = _study(result)
    trials = result.trials[:max_trials]
    langs = result.language_ids
    fig, ax = plots.plt.subplots(
        figsize=(max(6, 0.6 * len(langs) * max(1, len(trials)) / 2 + 3), 3.6), layout="constrained"
    )
    width = 0.8 / max(1, len(trials))
    for i, t in enumerate(trials):
        vals = np.array([_pct(_rel_delta(t, x)) for x in langs])
        ci = np.array(
            [
                [np.nan, np.nan] if e.lo is None else [100 * e.lo, 100 * cast(float, e.hi)]
                for e in (_rel_delta(t, x) for x in langs)
            ]
        )
        ax.bar(
            np.arange(len(langs)) + i * width,
            vals,
            width,
            yerr=np.vstack([vals - ci[:, 0], ci[:, 1] - vals]),
            capsize=2,
            label=t.name,
        )
    ax.set_xticks(np.arange(len(langs)) + width * (len(trials) - 1) / 2, langs, rotation=45, ha="right")
    ax.set_ylabel("relative Δbpb (%)")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_title("Per-language degradation (95% CI)", fontsize=10)
    ax.legend(fontsize=6, ncols=2)
    return fig


def figure_trial_heatmap(result: StudyResult | Mapping):
    from . import plots

    result = _study(result)
    langs = result.language_ids
    names = [t.name for t in result.trials]
    m = np.array([[_pct(_rel_delta(t, x)) for x in langs] for t in result.trials])
    return plots.heatmap(m, names, langs, "Relative Δbpb by trial and language", "% of reference bpb")


def layer_sweeps(result: StudyResult | Mapping) -> list[tuple[str, list[str], list[str], np.ndarray]]:
    """(title, layers, languages, recovered %) for each model x scheme with one-layer-protected trials.

    A trial protects one layer when every tensor its plan keeps lies in the same block; the baseline is the
    trial of the same model and scheme that keeps nothing and quantizes the most parameters.
    """
    result = _study(result)
    out = []
    langs = result.language_ids
    groups: dict[tuple[str, str], list[TrialResult]] = {}
    for t in result.trials:
        groups.setdefault((t.model, t.scheme), []).append(t)
    for (model, scheme), trials in groups.items():
        bases = [t for t in trials if t.cost.get("kept_params", 1) == 0]
        if not bases:
            continue
        base = max(bases, key=lambda t: t.cost.get("quantized_params", 0))
        layer_trials = [(t.protected_layer, t) for t in trials if t.protected_layer is not None]
        if len(layer_trials) < 2:
            continue
        layer_trials.sort(key=lambda x: x[0])

        def bpb(t: TrialResult, lang: str, metric: str) -> float:
            return cast(float, t.languages[lang].estimates[metric].value)

        m = np.array(
            [
                [100 * ((bpb(base, x, "bpb_q") - bpb(t, x, "bpb_q")) / bpb(t, x, "bpb_fp")) for x in langs]
                for _, t in layer_trials
            ]
        )
        out.append(
            (
                f"{model} · {scheme}: damage recovered by protecting one layer",
                [f"L{k}" for k, _ in layer_trials],
                langs,
                m,
            )
        )
    return out


def figure_pareto(result: StudyResult | Mapping):
    from . import plots

    result = _study(result)
    fig, ax = plots.plt.subplots(figsize=(6, 4), layout="constrained")
    for model in dict.fromkeys(t.model for t in result.trials):
        pts = [
            (t.cost.get("bits_per_weight", np.nan), _pct(_rel_delta(t, t.worst_language)), t.plan_name)
            for t in result.trials
            if t.model == model
        ]
        xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        ax.scatter(xs, ys, s=14, label=model, alpha=0.7)
        order = np.argsort(xs)
        front, best = [], np.inf
        for i in order:
            if ys[i] < best:
                best = ys[i]
                front.append(i)
        ax.step(xs[front], ys[front], where="post", linewidth=1)
    ax.set_xlabel("bits per weight (whole model, scales included)")
    ax.set_ylabel("worst-language relative Δbpb (%)")
    ax.set_title("Pareto frontier: size vs worst-language damage", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def figure_resource_scatter(result: StudyResult | Mapping, trial: TrialResult | Mapping):
    from . import plots

    result = _study(result)
    trial = trial if isinstance(trial, TrialResult) else TrialResult.from_dict(trial)
    rows = [
        (x["joshi_class"], _pct(_rel_delta(trial, x["id"])), x["id"])
        for x in result.languages
        if x.get("joshi_class") is not None and _rel_delta(trial, x["id"]).value is not None
    ]
    fig, ax = plots.plt.subplots(figsize=(5, 3.6), layout="constrained")
    if rows:
        xs, ys = np.array([r[0] for r in rows], float), np.array([r[1] for r in rows])
        ax.scatter(xs, ys)
        for x, y, name in rows:
            ax.annotate(name, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
        rho = trial.summary["spearman_joshi"]
        ax.set_title(f"{trial.name}: Spearman ρ = {fmt(rho, 2)}", fontsize=9)
        if len(rows) >= 2 and np.ptp(xs) > 0:
            ax.plot(np.unique(xs), np.poly1d(np.polyfit(xs, ys, 1))(np.unique(xs)), linewidth=0.8)
    ax.set_xlabel("Joshi et al. (2020) resource class")
    ax.set_ylabel("relative Δbpb (%)")
    return fig


def figures(result: StudyResult | Mapping) -> list[tuple[str, str]]:
    """(caption, base64 PNG) for every figure of the report."""
    from . import plots

    result = _study(result)
    out = [
        ("Per-language degradation of the first trials, with 95% intervals", _png(figure_bars(result))),
        ("Relative Δbpb of every trial (rows) in every language (columns)", _png(figure_trial_heatmap(result))),
    ]
    for title, rows, cols, m in layer_sweeps(result):
        out.append((title, _png(plots.heatmap(m, rows, cols, title, "% of reference bpb"))))
    out.append(
        (
            "Bits per weight against the worst language's damage; the line is the Pareto frontier",
            _png(figure_pareto(result)),
        )
    )
    out.append(
        (
            "Damage against the language's resource class, with the Spearman correlation",
            _png(figure_resource_scatter(result, result.trials[0])),
        )
    )
    return out


# -- HTML ----------------------------------------------------------------------------------------------------------
def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 1rem 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; } figcaption { font-size: 0.85rem; color: #555; }
.supported { color: #1a7f37; font-weight: 600; } .refuted { color: #b42318; font-weight: 600; }
.inconclusive { color: #8a6d00; }
code, pre { background: #f4f4f4; padding: 0.1rem 0.3rem; }
"""


def html_report(result: StudyResult | Mapping, environment: dict, store_info: dict) -> str:
    result = _study(result)
    spec = result.spec
    figs = figures(result)
    verdicts = "".join(
        f"<tr><td>{html.escape(v.id)}: <code>{html.escape(v.expr)}</code><br><small>{html.escape(cast(str, v.text))}"
        f"</small></td><td>{html.escape(', '.join(f'{k}={x}' for k, x in v.instance.items()) or '—')}</td>"
        f"<td>{html.escape(fmt(v.left, 3))}</td><td>{html.escape(fmt(v.right, 3))}</td>"
        f"<td>{html.escape(fmt(v.difference, 3, sign=True))}</td>"
        f"<td class='{v.verdict}'>{html.escape(verdict_cell(v))}</td>"
        f"<td class='{v.verdict_familywise or 'inconclusive'}'>{html.escape(familywise_cell(v))}</td></tr>"
        for v in result.verdicts
    )
    verdict_table = (
        (
            f"<table><thead><tr>{''.join(f'<th>{h}</th>' for h in VERDICT_HEADERS)}</tr></thead>"
            f"<tbody>{verdicts}</tbody></table>"
        )
        if result.verdicts
        else "<p>No claims in this spec.</p>"
    )
    fig_html = "".join(
        f"<figure><img alt='{html.escape(c)}' src='data:image/png;base64,{b}'>"
        f"<figcaption>{html.escape(c)}</figcaption></figure>"
        for c, b in figs
    )
    env_rows = [[k, str(v)] for k, v in environment.items() if k != "libraries"]
    env_rows += [[f"library: {k}", str(v)] for k, v in environment.get("libraries", {}).items()]
    env_rows += [[k, str(v)] for k, v in store_info.items()]
    g = result.groups
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(spec["name"])} — quant-disparity report</title>
<style>{_CSS}</style></head><body>
<h1>{html.escape(spec["name"])}</h1>
<p>{html.escape(spec["description"])}</p>
<p>Corpus <code>{html.escape(str(spec["corpus"]["name"]))}</code>, split <code>{html.escape(spec["corpus"]["split"])}</code>;
low-resource: {html.escape(", ".join(g["low"]) or "—")}; high-resource: {html.escape(", ".join(g["high"]) or "—")}
({html.escape(g["rule"])}). Bits per byte of UTF-8 text; 95% paired bootstrap intervals over documents
({spec["n_boot"]} replicates, seed {spec["seed"]}).</p>
<h2>Claims</h2>{verdict_table}{"".join(f"<p>{html.escape(n)}</p>" for n in method_notes(result))}
<h2>Trials</h2>{_html_table(TRIAL_HEADERS, trial_rows(result))}
{"".join(f"<h2>Task: {html.escape(c)}</h2>{_html_table(h, r)}" for c, h, r in task_tables(result))}
<h2>Figures</h2>{fig_html}
<h2>Environment and provenance</h2>{_html_table(["item", "value"], env_rows)}
</body></html>
"""
