"""The calibration-language table of a run of study.toml (or smoke.toml): per language and scheme, Δbpb with its 95%
interval under each calibration; the ``target`` column takes, for each language, the row of the trial calibrated
on that language (plan ``PLAN.target-LANG``, or ``PLAN.t-LANG``). Before it, a summary per scheme and calibration
(bits per weight, mean and worst relative damage, the low/high-resource disparity); after it, the 4-bit backends
side by side (English calibration where one is needed) and the claims' verdicts. Every number is read from the
run's results.json (written by ``quant-disparity run``); this script computes none of them except the mean of the
``target`` cells, which come from different trials. Writes markdown.

    python experiments/calibration/make_table.py RUN_DIR [--out TABLE.md]
    python experiments/calibration/make_table.py experiments/calibration/results/study --out .../table.md
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def _fmt(cell: dict | None) -> str:
    if not cell:
        return "–"
    v, ci = cell["value"], cell.get("ci95")
    return f"{v:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else " (no interval)")


def _columns(trials: list[dict]) -> dict[str, dict[str, dict[str, dict]]]:
    """scheme -> calibration label ("none" for an uncalibrated trial, "target" assembled per language) -> lang ->
    that language's row (every metric) of the trial."""
    cols: dict[str, dict[str, dict[str, dict]]] = {}
    for t in trials:
        m = re.fullmatch(r"[^.]+\.(?:(t|target)-(.+)|(.+))", t["plan_name"])
        per = cols.setdefault(t["scheme"], {})
        if m is None:  # an uncalibrated trial
            per.setdefault("none", {}).update(t["languages"])
        elif m.group(1):  # a target trial: only its own language's row
            for lg, row in t["languages"].items():
                if lg.split("_")[0] == m.group(2).split("_")[0]:
                    per.setdefault("target", {})[lg] = row
        else:
            per.setdefault(m.group(3), {}).update(t["languages"])
    return cols


def _trial(trials: list[dict], scheme: str, label: str) -> dict | None:
    """The one trial of ``scheme`` under calibration ``label`` ("none": the uncalibrated one)."""
    for t in trials:
        if t["scheme"] != scheme:
            continue
        suffix = t["plan_name"].partition(".")[2]
        if (label == "none" and not suffix) or suffix == label:
            return t
    return None


def _pct(cell: dict | None) -> str:
    if not cell or cell.get("value") is None:
        return "–"
    v, ci = cell["value"], cell.get("ci95")
    return f"{100 * v:.1f} %" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def _ratio(cell: dict | None) -> str:
    if not cell or cell.get("value") is None:
        return "–"
    v, ci = cell["value"], cell.get("ci95")
    return f"{v:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def summary(results: dict, cols: dict) -> list[str]:
    """Per scheme and calibration: bits, mean and worst relative Δbpb, the low/high disparity (the trial's own
    statistics; the target column is assembled from one trial per language, so it has only the mean, worst)."""
    trials = results["trials"]
    out = [
        "## Summary",
        "",
        "Relative damage = Δbpb / full-precision bpb, per language; mean over the languages with the run's 95 % "
        "interval; disparity = mean relative damage of the low-resource languages over that of the high-resource "
        f"ones ({', '.join(results['groups']['low'])} low; {', '.join(results['groups']['high'])} high). "
        "`target` assembles one trial per language (each calibrated on the language it is scored on): its mean is "
        "of point values, without an interval.",
        "",
        "| scheme | calibration | tokens | bits per quantized weight | mean rel. Δbpb | worst language (rel. Δbpb) | disparity low/high |",
        "|---|---|---|---|---|---|---|",
    ]
    for scheme, per in cols.items():
        for label, rows in per.items():
            t = _trial(trials, scheme, label)
            if t is not None:
                bits = t["cost"].get("bits_per_quantized_weight")
                worst = t["worst_language"]
                n_tok = (t.get("calibration") or {}).get("n_tokens")
                out.append(
                    f"| {scheme} | {label} | {n_tok if n_tok is not None else '–'} | {bits:.3f} | "
                    f"{_pct(t['summary']['mean_rel_delta'])} | {worst} "
                    f"({_pct(t['languages'][worst]['rel_delta_bpb'])}) | {_ratio(t['summary']['disparity'])} |"
                )
            else:
                rel = {lg: r["rel_delta_bpb"]["value"] for lg, r in rows.items()}
                worst = max(rel, key=lambda lg: rel[lg])
                mean = sum(rel.values()) / len(rel)
                toks = [
                    (t.get("calibration") or {}).get("n_tokens")
                    for t in results["trials"]
                    if t["scheme"] == scheme and re.fullmatch(r"[^.]+\.(?:t|target)-.+", t["plan_name"])
                ]
                toks = [x for x in toks if x is not None]
                span = f"{min(toks)}–{max(toks)}" if toks else "–"
                out.append(
                    f"| {scheme} | {label} ({len(rel)} trials) | {span} | | {100 * mean:.1f} % | {worst} "
                    f"({100 * rel[worst]:.1f} %) | |"
                )
    return out + [""]


#: The 4-bit backends side by side, each at its default calibration (English where it takes one).
FOUR_BIT = (
    ("w4g128", "none"),
    ("gptq:w4g128", "eng"),
    ("awq:w4g128", "eng"),
    ("gguf:q4_k", "none"),
    ("gguf:q4_k-imatrix", "eng"),
    ("gguf:q4_k_m", "none"),
    ("hqq:w4g64", "none"),
    ("quanto:w4", "none"),
)


def four_bit(results: dict, cols: dict, langs: list[str]) -> list[str]:
    have = [(s, c) for s, c in FOUR_BIT if c in cols.get(s, {})]
    if not have:
        return []
    bits = {}
    for s, c in have:
        t = _trial(results["trials"], s, c)
        bits[s] = t["cost"].get("bits_per_quantized_weight") if t else None
    head = [f"{s}{' (' + c + ')' if c != 'none' else ''}, {bits[s]:.3f} b/w" for s, c in have]
    out = [
        "## The 4-bit backends side by side",
        "",
        "Δbpb [95 % CI] on the same held-out documents; calibrated backends on English (`eng`); bits per weight "
        "as each stores them.",
        "",
        "| language | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(have),
    ]
    for lg in langs:
        out.append(f"| {lg} | " + " | ".join(_fmt(cols[s][c].get(lg, {}).get("delta_bpb")) for s, c in have) + " |")
    return out + [""]


#: The compact table (point values; the README's): each backend at 4 bits, GPTQ and AWQ under both English and mix.
COMPACT = (
    ("w4g128", "none"),
    ("gptq:w4g128", "eng"),
    ("gptq:w4g128", "mix"),
    ("awq:w4g128", "eng"),
    ("awq:w4g128", "mix"),
    ("hqq:w4g64", "none"),
    ("quanto:w4", "none"),
    ("gguf:q4_k", "none"),
    ("gguf:q4_k-imatrix", "eng"),
    ("gguf:q4_k_m", "none"),
)


def compact(results: dict, langs: list[str]) -> list[str]:
    """Δbpb points per language for the 4-bit backends, with bits, mean relative damage and disparity."""
    have = [(s, c, t) for s, c in COMPACT if (t := _trial(results["trials"], s, c)) is not None]
    if not have:
        return []
    head = [f"`{s}`" + (f" {c}" if c != "none" else "") for s, c, _ in have]
    point = lambda e, f: "–" if not e or e.get("value") is None else f(e["value"])
    out = [
        "## The 4-bit backends, compact",
        "",
        "Δbpb per language (point values; intervals in the tables above).",
        "",
        "| language | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(have),
        "| bits per quantized weight | "
        + " | ".join(f"{t['cost']['bits_per_quantized_weight']:.3f}" for *_, t in have)
        + " |",
    ]
    for lg in langs:
        cells = [point(t["languages"].get(lg, {}).get("delta_bpb"), lambda v: f"{v:+.3f}") for *_, t in have]
        out.append(f"| {lg.split('_')[0]} | " + " | ".join(cells) + " |")
    out.append(
        "| mean relative damage | "
        + " | ".join(point(t["summary"]["mean_rel_delta"], lambda v: f"{100 * v:.1f} %") for *_, t in have)
        + " |"
    )
    out.append(
        "| disparity low/high | "
        + " | ".join(point(t["summary"]["disparity"], lambda v: f"{v:.2f}") for *_, t in have)
        + " |"
    )
    return out + [""]


def cross(results: dict, langs: list[str]) -> list[str]:
    """Per scheme with target trials: Δbpb of every evaluated language (columns) under each calibration (rows: the
    calibration languages of its target trials, then eng and mix) — a target trial scores every language, so the
    whole matrix is measured; the diagonal is the target column. Points only; the intervals are in the tables
    above for the diagonal and the eng/mix rows."""
    out: list[str] = []
    by_scheme: dict[str, dict[str, dict]] = {}
    for t in results["trials"]:
        m = re.fullmatch(r"[^.]+\.(?:t|target)-(.+)", t["plan_name"])
        if m:
            by_scheme.setdefault(t["scheme"], {})[m.group(1)] = t["languages"]
    for scheme, rows in by_scheme.items():
        if len(rows) < 2:
            continue
        if not out:
            out += [
                "## Cross-calibration",
                "",
                "Δbpb of each evaluated language (columns) when the model is calibrated on one language (rows; the "
                "diagonal is the target column), with the English-only and the mix calibrations below; point values.",
                "",
            ]
        short = [lg.split("_")[0] for lg in langs]
        out += [f"### {scheme}", "", "| calibrated on | " + " | ".join(short) + " |", "|---|" + "---|" * len(langs)]
        extra = {}
        for label in ("eng", "mix"):
            t = _trial(results["trials"], scheme, label)
            if t and label not in rows:  # eng's target trial is the eng trial: one row
                extra[f"**{label}** (trial)"] = t["languages"]
        for name, per in [*rows.items(), *extra.items()]:
            cells = []
            for lg in langs:
                d = per.get(lg, {}).get("delta_bpb")
                v = f"{d['value']:+.3f}" if d and d.get("value") is not None else "–"
                cells.append(f"**{v}**" if lg.split("_")[0] == name.split("_")[0] else v)
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        own = []
        for lg in langs:
            base = lg.split("_")[0]
            vals = {k.split("_")[0]: per.get(lg, {}).get("delta_bpb", {}).get("value") for k, per in rows.items()}
            others = [v for k, v in vals.items() if k != base and v is not None]
            own.append(
                f"{vals[base] - sum(others) / len(others):+.3f}" if vals.get(base) is not None and others else "–"
            )
        out += ["| own − mean of the other calibrations | " + " | ".join(own) + " |", ""]
    return out


def verdicts(results: dict) -> list[str]:
    vs = results.get("verdicts") or []
    if not vs:
        return []
    out = [
        "## Claims",
        "",
        "| claim | instance | left − right [95 % CI] | verdict | family-wise (Holm) |",
        "|---|---|---|---|---|",
    ]
    for v in vs:
        inst = ", ".join(f"{k}={x}" for k, x in (v.get("instance") or {}).items())
        out.append(
            f"| {v['id']}: {v.get('text') or v['expr']} | {inst} | {_fmt(v['difference'])} | {v['verdict']} | "
            f"{v.get('verdict_familywise') or '–'} |"
        )
    return out + [""]


def table(results: dict) -> str:
    trials = results["trials"]
    langs = list(dict.fromkeys(lang for t in trials for lang in t["languages"]))
    cols = _columns(trials)
    out = [f"# Calibration-language table: {results['spec']['name']}", ""]
    out += summary(results, cols)
    out += ["## Per language and calibration", "",
            "Δbpb (quantized − full precision, bits per byte) on held-out documents, 95% paired bootstrap interval.", ""]  # fmt: skip
    for scheme, per in cols.items():
        labels = list(per)
        out += [f"### {scheme}", "", "| language | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for lg in langs:
            out.append(f"| {lg} | " + " | ".join(_fmt(per[c].get(lg, {}).get("delta_bpb")) for c in labels) + " |")
        out.append("")
    out += four_bit(results, cols, langs)
    out += cross(results, langs)
    out += compact(results, langs)
    out += verdicts(results)
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    # a run directory (its latest invocation's results.json), or a directory holding one (a committed export)
    found = [args.run_dir / "results.json"] if (args.run_dir / "results.json").exists() else []
    found = found or sorted(args.run_dir.glob("*/results.json"))
    if not found:
        raise SystemExit(f"no results.json under {args.run_dir}")
    md = table(json.loads(found[-1].read_text(encoding="utf-8")))
    if args.out:
        args.out.write_text(md + "\n", encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
