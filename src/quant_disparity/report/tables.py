"""Tables of stored results: markdown files and the terminal (rich). Every number comes from the result.

The functions take a result as its JSON mapping (audit.json, locate.json) and read it through the records of
:mod:`..analysis.records`; an estimate may be an :class:`..analysis.stats.Estimate` or its mapping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

from ..analysis.records import LanguageRow, LocateResult
from ..analysis.stats import MIN_DOCS_FOR_INTERVAL, Estimate
from . import fertility

#: Marks a value shown without an interval because of too few documents (see ``no_interval_footnote``).
NO_CI = "†"


def _estimate(est: Estimate | Mapping | None) -> Estimate | None:
    return Estimate.from_dict(est) if isinstance(est, Mapping) else est


def lacks_interval(est: Estimate | Mapping | None) -> bool:
    """A value that has no interval because a language has too few documents for one."""
    est = _estimate(est)
    return est is not None and est.value is not None and est.lo is None and "too few documents" in (est.note or "")


def no_interval_footnote(langs: Sequence[str]) -> str:
    return (
        f"{NO_CI} no interval: too few documents (< {MIN_DOCS_FOR_INTERVAL}) for a bootstrap interval in "
        f"{', '.join(langs)}; values that depend on them are shown alone and claims on them are inconclusive."
    )


def short_languages(languages: Sequence[LanguageRow]) -> list[str]:
    """``"lang (n docs)"`` for each audit language row without an interval."""
    return [f"{r.lang} ({r.n_docs} docs)" for r in languages if lacks_interval(r.estimates.get("rel_delta_bpb"))]


def fmt(est: Estimate | Mapping | None, digits: int = 3, pct: bool = False, sign: bool = False) -> str:
    """``{"value": v, "ci95": [lo, hi]}`` -> ``"v [lo, hi]"`` (percent when ``pct``); ``"v †"`` when the value
    has no interval because of too few documents."""
    est = _estimate(est)
    if est is None or est.value is None:
        return "undefined" if est is not None and est.note else "—"
    k = 100.0 if pct else 1.0
    spec = f"{'+' if sign else ''}.{digits}f"
    text = format(est.value * k, spec) + ("%" if pct else "")
    if est.lo is not None:
        assert est.hi is not None  # an interval has both bounds
        text += f" [{format(est.lo * k, f'.{digits}f')}, {format(est.hi * k, f'.{digits}f')}]"
    elif lacks_interval(est):
        text += f" {NO_CI}"
    return text


def by_damage(row, key: str = "rel_delta_bpb") -> tuple[bool, float]:
    """Sort key: largest ``key`` first, undefined values last (an exact 0.0 is a value, not a missing one).

    ``row``: a record with ``estimates`` (a language of an audit or of a trial), or its mapping."""
    v = cast(Estimate, _estimate(row[key] if isinstance(row, Mapping) else row.estimates[key])).value
    return (v is None, 0.0 if v is None else -v)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


AUDIT_COLUMNS = (
    "language",
    "Joshi",
    "bpb FP",
    "bpb quant",
    "Δbpb [95% CI]",
    "rel. Δbpb [95% CI]",
    "KL bits/token",
    "top-1 agree",
    "token PPL ratio",
)


def language_rows(result: Mapping) -> list[LanguageRow]:
    """The language rows of an audit result mapping."""
    return [LanguageRow.from_dict(r) for r in result["languages"]]


def _joshi(r: LanguageRow) -> str:
    return "—" if r.joshi_class is None else str(r.joshi_class)


def audit_rows(result: Mapping) -> list[list[str]]:
    rows = []
    for r in sorted(language_rows(result), key=by_damage):
        e = r.estimates
        rows.append(
            [
                f"{r.lang} ({r.name})" + (f" {NO_CI}" if lacks_interval(e["rel_delta_bpb"]) else ""),
                _joshi(r),
                fmt(e["bpb_fp"], 3).split(" [")[0],
                fmt(e["bpb_q"], 3).split(" [")[0],
                fmt(e["delta_bpb"], 3, sign=True),
                fmt(e["rel_delta_bpb"], 1, pct=True, sign=True),
                fmt(e["kl_bits"], 3),
                fmt(e["top1_agreement"], 1, pct=True),
                fmt(e["ppl_ratio"], 2),
            ]
        )
    return rows


def audit_summary_lines(result: Mapping) -> list[str]:
    s = result["summary"]
    d = s["disparity"]
    c = s["correlation"]
    w = s["worst_language"]
    lines = [
        f"Worst language: {w['lang']}, relative Δbpb {fmt(w['rel_delta_bpb'], 1, pct=True, sign=True)}.",
        f"Low-resource ({', '.join(d['low']) or 'none'}) vs high-resource ({', '.join(d['high']) or 'none'}) "
        f"[{s['groups']['rule']}]: mean relative Δbpb {fmt(d['low_mean'], 1, pct=True)} vs "
        f"{fmt(d['high_mean'], 1, pct=True)}; difference {fmt(d['difference'], 1, pct=True, sign=True)} points; "
        f"ratio {fmt(d['ratio'], 2)}" + (f" ({d['ratio']['note']})" if d["ratio"].get("note") else "") + ".",
        f"Spearman correlation of relative Δbpb with {c['measure']} ({c['description']}), "
        f"{c['n_languages']} languages: {fmt(c['spearman'], 2)}"
        + (f" ({c['spearman']['note']})" if c["spearman"].get("note") else "")
        + ".",
    ]
    lines += fertility.summary_lines(result, fmt)
    return lines


def artifact_lines(sc: Mapping) -> list[str]:
    """What a pre-quantized artifact changed and what it stores (an audit's ``scheme.artifact``), for audit.md."""
    a, cst = sc["artifact"], sc["cost"]
    differ = [f"{comp} {r['differing']}/{r['tensors']}" for comp, r in a["by_component"].items() if r["differing"]]
    types = ", ".join(f"{t} {v['tensors']}" for t, v in sorted(a["tensor_types"].items()))
    block = cst.get("bits_per_block_linear_weight")
    return [
        f"- Quantized: the artifact `{a['path']}` ({a['format']}, sha256 `{a['sha256'][:16]}`): "
        + (
            f"{a['differing_tensors']} of {a['differing_tensors'] + a['equal_tensors']} tensors differ from the "
            f"reference ({', '.join(differ)} differing/tensors)."
            if a["differing_tensors"]
            else "no tensor differs from the reference (it is compared with itself)."
        )
        + (f" Tensors the reference lacks: {', '.join(a['not_in_reference'])}." if a["not_in_reference"] else ""),
        f"- Cost, as the artifact stores every tensor ({types} tensors by stored type): "
        f"{cst['bits_per_weight']:.3f} bits per weight over the whole model"
        + (f", {block:.3f} per block Linear weight." if block is not None else "."),
    ]


def audit_markdown(result: Mapping) -> str:
    m, sc, co, cfg = result["model"], result["scheme"], result["corpus"], result["config"]
    short = short_languages(language_rows(result))
    q = sc["quantized"]
    cst = sc["cost"]
    scheme_lines = (
        artifact_lines(sc)
        if sc.get("artifact")
        else [
            "- Quantized: nothing (the reference is compared with itself)."
            if not cst["quantized_params"]
            else f"- Quantized: {q['tensors']} tensors in layers {q['layers']} "
            f"({', '.join(f'{k}' for k in q['params_by_component'])}); kept: {', '.join(q['kept_components'])}."
            + (f" {' '.join(q['tied'])}." if q["tied"] else ""),
            (
                "- Cost: no weight quantized; "
                if cst["bits_per_quantized_weight"] is None
                else f"- Cost: {cst['bits_per_quantized_weight']:.3f} bits per quantized weight (scales included); "
            )
            + f"{cst['bits_per_weight']:.2f} bits per weight over the whole model; "
            f"{100 * cst['quantized_fraction']:.1f}% of parameters quantized.",
        ]
    )
    head = [
        f"# Audit: {m['name']} with {sc['name']}",
        "",
        f"- Model: `{m['name']}` ({m['arch']}, {m['n_params']:,} parameters, {m['dtype']} on {m['device']}); "
        f"digest `{m['digest'][:16]}`. Reference: {sc['reference']}.",
        *scheme_lines,
        f"- Corpus: `{co['name']}` (digest `{co['digest'][:16]}`), split `{co['split']}`, up to "
        f"{co['max_tokens_per_language'] or 'all'} tokens per language (whole documents"
        + (f", at least {co['min_docs_per_language']} each" if co.get("min_docs_per_language") else "")
        + ").",
        f"- Bits per byte of UTF-8 text; 95% paired bootstrap intervals over documents ({cfg['n_boot']} "
        f"replicates, seed {cfg['seed']}). Token perplexity ratios are per tokenizer and not comparable "
        f"across scripts.",
        "",
        markdown_table(AUDIT_COLUMNS, audit_rows(result)),
        "",
        *([no_interval_footnote(short), ""] if short else []),
        *[f"- {line}" for line in audit_summary_lines(result)],
        "",
        *fertility.markdown_section(result, sorted(language_rows(result), key=by_damage), markdown_table),
        f"Environment: quant-disparity {result['environment']['quant_disparity']} "
        f"(git {result['environment']['git_revision'] or 'unknown'}), torch "
        f"{result['environment']['libraries']['torch']}, transformers "
        f"{result['environment']['libraries']['transformers']}; evaluation took {result['timing']['evaluate_s']:.0f} s "
        f"for {result['timing']['predicted_tokens']:,} tokens (x2 models).",
        "",
    ]
    return "\n".join(head)


def audit_rich_table(result: Mapping):
    """A compact terminal table (the markdown file has every column)."""
    from rich.table import Table

    langs = sorted(language_rows(result), key=by_damage)
    short = short_languages(langs)
    t = Table(
        title=f"{result['model']['name']} · {result['scheme']['name']} · sorted by relative Δbpb (95% CI)",
        title_justify="left",
        caption=no_interval_footnote(short) if short else None,
        caption_justify="left",
    )
    cols: tuple[str, ...] = ("language", "docs", "Joshi", "bpb FP", "bpb Q", "Δbpb", "rel. Δbpb", "KL bits", "top-1")
    with_fertility = fertility.has_fertility(result)
    cols += fertility.COLUMNS if with_fertility else ()
    for i, col in enumerate(cols):
        t.add_column(col, justify="left" if i == 0 else "right")
    for r in langs:
        e = r.estimates
        t.add_row(
            r.lang + (f" {NO_CI}" if lacks_interval(e["rel_delta_bpb"]) else ""),
            str(r.n_docs),
            _joshi(r),
            fmt(e["bpb_fp"], 3).split(" [")[0],
            fmt(e["bpb_q"], 3).split(" [")[0],
            fmt(e["delta_bpb"], 3, sign=True),
            fmt(e["rel_delta_bpb"], 1, pct=True, sign=True),
            fmt(e["kl_bits"], 2),
            fmt(e["top1_agreement"], 0, pct=True).split(" [")[0],
            *(fertility.cells(r) if with_fertility else ()),
        )
    return t


def _shared_kv_note(units) -> list[str]:
    shared = [u for u in units if u.get("shared_by")]
    if not shared:
        return []
    return [
        f"- Grouped-query attention: each key/value head is a unit of its own (its k and v rows), counted once; "
        f"e.g. {shared[0]['name']} serves {', '.join(shared[0]['shared_by'])}. A query head's unit holds its q rows "
        "and o columns."
    ]


def _estimate_note(est: Mapping | None) -> list[str]:
    if not est:
        return []
    n = len(est["measured_units"]) + len(est["unmeasured_units"])
    return [
        f"- Estimated: only the {len(est['measured_units'])} of {n} units that the score `{est['score']}` ranks "
        f"first ({est['order']}; {est['combined']}) were measured, scored in {est['score_s']:.1f} s: "
        f"{', '.join(est['measured_units'])}. The others ({', '.join(est['unmeasured_units']) or 'none'}) were not.",
    ]


def locate_markdown(data: Mapping) -> str:
    res = LocateResult.from_dict(data)
    units, langs, m = res.effect_matrix()
    verb = "protecting" if res.mode == "protect-one" else "quantizing only"
    lines = [
        f"# Locate: {res.model['name']} with {res.scheme['name']} ({res.mode}, by {res.granularity})",
        "",
        f"- Effect: {res.effect}, in % of the reference bits per byte; 95% paired bootstrap intervals over "
        f"documents ({res.config['n_boot']} replicates).",
        f"- Corpus `{res.corpus['name']}`, split `{res.corpus['split']}`, up to "
        f"{res.corpus['max_tokens_per_language'] or 'all'} tokens per language"
        + (
            f" (at least {res.corpus['min_docs_per_language']} documents each)"
            if res.corpus.get("min_docs_per_language")
            else ""
        )
        + ".",
        f"- {res.timing['configurations']} configurations x {res.timing['tokens_per_configuration']:,} tokens "
        f"in {res.timing['evaluate_s']:.0f} s; block replay saved "
        f"{100 * res.timing['block_work_saved']:.0f}% of decoder-block work.",
        *_shared_kv_note(res.units),
        *_estimate_note(res.estimate),
        "",
        "## Damage with everything quantized",
        "",
        markdown_table(
            ["language", "bpb reference", "Δbpb all quantized", "rel. Δbpb"],
            [
                [
                    lang,
                    fmt(res.results[lang].bpb_fp, 3).split(" [")[0],
                    fmt(res.results[lang].all_quantized["delta_bpb"], 3, sign=True),
                    fmt(res.results[lang].all_quantized["rel_delta_bpb"], 1, pct=True, sign=True),
                ]
                for lang in langs
            ],
        ),
        "",
        f"## Top units per language (effect of {verb} the unit)",
        "",
    ]
    rows = []
    for lang in langs:
        r = res.results[lang]
        top = [f"{u} {fmt(r.units[u].effect, 1, pct=True, sign=True)}" for u in r.ranking[:3]]
        rows.append([lang, *top])
    lines += [
        markdown_table(["language", "1st", "2nd", "3rd"], rows, "llll"),
        "",
        "## Effect by unit and language (% of reference bpb)",
        "",
        markdown_table(["unit", *langs], [[u, *(f"{v:+.2f}" for v in m[i])] for i, u in enumerate(units)]),
        "",
    ]
    if res.pairs:
        prow = []
        for a, b in res.pairs:
            for lang in langs:
                p = res.results[lang].pairs[f"{a}+{b}"]
                prow.append(
                    [
                        f"{a} + {b}",
                        lang,
                        fmt(p.effect_a, 2, pct=True, sign=True),
                        fmt(p.effect_b, 2, pct=True, sign=True),
                        fmt(p.metrics["rel_delta_bpb"], 2, pct=True, sign=True),
                        fmt(p.interaction, 2, pct=True, sign=True),
                    ]
                )
        lines += [
            "## Pair interactions",
            "",
            f"Interaction = effect of {verb} both − effect of A − effect of B (positive: synergy).",
            "",
            markdown_table(
                ["pair", "language", "effect A", "effect B", "rel. Δbpb of A+B config", "interaction"], prow
            ),
            "",
        ]
    return "\n".join(lines)
