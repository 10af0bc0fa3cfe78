"""REPLICATION.md rows for the log's claims about the inside of the layers (heads, dense outliers, super weights,
tokenizer fertility), from the committed ``results/inside-MODEL.json`` (written by ``export_inside.py``).

Every number is read from those files; the only typed text is the log's own statements, and the rules that
turn numbers into verdicts (written in the cells). The claim on language-specific neurons (C21, H5.3c) is in rows_neurons.py.
"""

from __future__ import annotations

import json
from pathlib import Path

MODELS = ("gemma-3-270m", "smollm2-135m")

LOG = {
    "C20": ("Heads: the last layer's V weights are 3x larger (Exp-054)", "L11 V weights 3x larger"),
    "C22a": ("Outliers are dense, not a few super weights (lab journal 2026-01-04)", "dense pattern"),
    "C22b": ("A few super weights do not decide the damage (lab journal 2026-01-04)", "not a few super weights"),
    "C23": ("Damage follows structure, not token count (Exp-059)", "structure > token count"),
}
#: C20: the log's factor.
V_FACTOR = 3.0


def _load(export: Path) -> dict[str, dict]:
    out = {}
    for m in MODELS:
        path = export / f"inside-{m}.json"
        if path.exists():
            out[m] = json.loads(path.read_text())
    return out


def _ci(e: dict, d: int = 3) -> str:
    v, ci = e.get("value"), e.get("ci95")
    if v is None:
        return "undefined"
    return f"{v:+.{d}f}" + (f" [{ci[0]:+.{d}f}, {ci[1]:+.{d}f}]" if ci else " (no interval)")


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    k = len(s) // 2
    return s[k] if len(s) % 2 else (s[k - 1] + s[k]) / 2


def _summary(held: list[bool]) -> str:
    """Across models: holds in all, in none, or mixed."""
    return "holds" if held and all(held) else "does not hold" if held and not any(held) else "mixed"


def heads(data: dict[str, dict]) -> tuple[str, str]:
    """C20: the last block's V root mean square over the median of the other blocks'; the largest block and head."""
    cells, held = [], []
    for m, d in data.items():
        v = d["v_heads"]
        last = v[-1]
        others = _median([r["rms"] for r in v[:-1]])
        top = max(v, key=lambda r: r["rms"])
        head = max(((r["layer"], g, h["rms"]) for r in v for g, h in enumerate(r["heads"])), key=lambda x: x[2])
        ratio = last["rms"] / others
        peak = last["max_abs"] / _median([r["max_abs"] for r in v[:-1]])
        held.append(ratio >= V_FACTOR)
        cells.append(
            f"{m}: last block (L{last['layer']}) V rms / median of the others {ratio:.2f} (largest |w|: {peak:.2f}); "
            f"largest V rms in L{top['layer']} ({top['rms'] / others:.2f}× the median); largest of the "
            f"{len(last['heads'])} key/value heads per block: L{head[0]}.kv{head[1]} ({head[2] / others:.2f}×)"
        )
    return "<br>".join(cells), f"{_summary(held)} (rule: last block's V rms ≥ {V_FACTOR:g}× the other blocks' median)"


def dense(data: dict[str, dict]) -> tuple[str, str]:
    """C22a: tail statistics across tensors against a Gaussian."""
    cells, held = [], []
    for m, d in data.items():
        s = d["outliers"]["summary"]
        g = s["gaussian"]["share_beyond_3sd"]
        share = s["tensors_with_weights_beyond_6sd"] / s["tensors"]
        is_dense = s["median_share_beyond_3sd"] > g and share > 0.5
        held.append(is_dense)
        cells.append(
            f"{m}: median share beyond 3 sd {100 * s['median_share_beyond_3sd']:.2f} % (Gaussian {100 * g:.2f} %); "
            f"{s['tensors_with_weights_beyond_6sd']} of {s['tensors']} tensors hold weights beyond 6 sd "
            f"({s['weights_beyond_6sd']} weights); median excess kurtosis {s['median_kurtosis']:.2f}, largest "
            f"{s['max_kurtosis']:.1f}"
        )
    return "<br>".join(cells), (
        f"{_summary(held)} (rule: dense when the median tensor has more weights beyond 3 sd than a Gaussian and most "
        "tensors hold weights beyond 6 sd)"
    )


def super_weights(data: dict[str, dict]) -> tuple[str, str]:
    """C22b: super weights found, and what zeroing / keeping them does per language."""
    cells, verdicts = [], []
    for m, d in data.items():
        sw = d["super_weights"]
        th = sw["thresholds"]
        if not sw["found"]:
            ratio, layer, row, col = sw["largest_output_ratio"]
            cells.append(
                f"{m}: no super weight at the default thresholds (ratio {th['ratio']:g}, share {th['min_share']:g}); "
                f"the largest down-projection output is {ratio:.0f}× its block's median (L{layer}, row {row}, "
                f"column {col}), but no single weight creates it from a massive input (the input-ratio or share test "
                "fails)"
            )
            verdicts.append("holds")
            continue
        fx = d.get("super_effect")
        found = ", ".join(f"L{a} ({b}, {c}) {v:+.3g}" for a, b, c, v in sw["found"])
        if fx is None:
            cells.append(f"{m}: {len(sw['found'])} super weights ({found}); ablation not run")
            verdicts.append("not run")
            continue
        langs = fx["languages"]
        zero = {k: r["zero_super"]["delta_bpb"] for k, r in langs.items()}
        uni = {k: r["uniform"]["delta_bpb"] for k, r in langs.items()}
        save = {k: r["uniform_minus_keep_super_bpb"] for k, r in langs.items()}
        hurt = [k for k, e in zero.items() if e.get("ci95") and e["ci95"][0] > 0]
        worse = [k for k in hurt if zero[k]["value"] > uni[k]["value"]]
        helps = [k for k, e in save.items() if e.get("ci95") and e["ci95"][0] > 0]
        lo, hi = min(zero, key=lambda k: zero[k]["value"]), max(zero, key=lambda k: zero[k]["value"])
        cells.append(
            f"{m}: {len(sw['found'])} super weights ({found}). Zeroing them (nothing else changed): Δbpb from "
            f"{_ci(zero[lo])} ({lo}) to {_ci(zero[hi])} ({hi}); interval above zero in {len(hurt)} of {len(zero)} "
            f"languages, above the whole uniform {fx['arms']['uniform']['plan'].split(':')[0]} damage in "
            f"{len(worse)}. Keeping them under that scheme lowers Δbpb significantly in {len(helps)} of "
            f"{len(save)} languages (median saving {_median([e['value'] for e in save.values()]):+.4f} bpb)"
        )
        verdicts.append("does not hold" if len(hurt) == len(zero) else "inconclusive" if not hurt else "mixed")
    s = set(verdicts)
    verdict = (
        "not decided (an ablation was not run)"
        if "not run" in s
        else s.pop()
        if len(s) == 1
        else "mixed (model-specific)"
    )
    return "<br>".join(cells), (
        f"{verdict} (rule per model: holds without super weights; does not hold when zeroing the few super "
        "weights raises bpb in every language, interval above zero)"
    )


def fertility(data: dict[str, dict]) -> tuple[str, str]:
    """C23: Spearman of relative Δbpb with tokens per byte / per word, next to the resource class."""
    cells, linked = [], []
    for m, d in data.items():
        f = d["fertility"]
        parts = []
        for measure in ("tokens_per_byte", "tokens_per_word"):
            c = f["fertility"][measure]
            sp = c.get("spearman", {})
            parts.append(f"ρ(tokens per {measure.split('_')[-1]}) {_ci(sp, 2)} ({c['n_languages']} languages)")
            if sp.get("ci95") and (sp["ci95"][0] > 0 or sp["ci95"][1] < 0):
                linked.append(f"{m} {measure}")
        r = f["resource"]
        parts.append(f"ρ(Joshi class) {_ci(r.get('spearman', {}), 2)}")
        cells.append(f"{m} (uniform w4g128, relative Δbpb, held-out): " + "; ".join(parts))
    verdict = (
        f"does not hold ({', '.join(linked)}: damage tracks token count)"
        if linked
        else "inconclusive (no interval excludes zero: token count does not measurably explain the damage, and "
        "neither does the resource class; structure is not shown either)"
    )
    return "<br>".join(cells), verdict


def inside_rows(export: Path) -> list[list[str]]:
    """The rows, in REPLICATION.md's columns (claim, statement, the log, log's setup, sound, verdict,
    family-wise); a claim whose export is missing says so."""
    data = _load(export)
    rows = []
    for cid, fn in (("C20", heads), ("C22a", dense), ("C22b", super_weights), ("C23", fertility)):
        statement, numbers = LOG[cid]
        cell, verdict = fn(data) if data else ("not run (needs export_inside.py)", "not run")
        rows.append([cid, statement, numbers, "—", cell, verdict, "—"])
    return rows
