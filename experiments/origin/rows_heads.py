"""REPLICATION.md row for the log's claim that 16.7 % of attention heads are language-specific (its B-001 track,
GPT-2), from the committed ``results/heads-MODEL.json`` (written by ``export_heads.py`` from ``quant-disparity
inspect heads``).

Every number is read from those files; the only typed text is the log's statement and number, and the reading
rule (written in the cell). The log does not record its test for "language-specific", so the row sets the
measured shares beside its number rather than calling a verdict on a definition it cannot match.
"""

from __future__ import annotations

import json
from pathlib import Path

MODELS = ("gemma-3-270m", "smollm2-135m")
CLAIM = "C20b"
STATEMENT = ("Language-specific attention heads (B-001, GPT-2)", "16.7 % of heads are language-specific")


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def _rho(e: dict) -> str:
    v, ci = e.get("value"), e.get("ci95")
    if v is None:
        return f"undefined ({e.get('note', '')})"
    return f"{v:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else " (no interval)")


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    k = len(s) // 2
    return s[k] if len(s) % 2 else (s[k - 1] + s[k]) / 2


def head_rows(export: Path) -> list[list[str]]:
    """The row in REPLICATION.md's columns (claim, statement, the log, log's setup, sound, verdict, family-wise)."""
    cells = []
    for model in MODELS:
        path = export / f"heads-{model}.json"
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        langs = d["languages"]
        shares = [x["share_specific"] for x in langs if x["share_specific"] is not None]
        per = ", ".join(f"{x['id'].split('_')[0]} {_pct(x['share_specific'])}" for x in langs)
        fp = d["false_positive"]
        cell = (
            f"{model} ({d['n_heads']} query heads, {d['split']} split, "
            f"{'/'.join(sorted({str(x['docs']) for x in langs}))} documents per language; specific: "
            f"{100 * d['interval_level']:g}% interval (95% family-wise) of the standardized difference "
            f"{'less the common shift of all heads ' if d.get('relative') else ''}beyond "
            f"±{d['threshold']:g} on one of 4 attention statistics): "
            + (f"median {_pct(_median(shares))} of heads per language ({per})" if shares else "no interval")
            + f"; half-split false positives: mean {_pct(fp['mean_share'])}, largest {_pct(fp['max_share'])}"
        )
        pred = d["prediction"]
        if "pending" in pred:
            cell += "; specificity vs protect-one effect: pending (" + pred["pending"] + ")"
        else:
            rows = [r for r in pred["languages"] if "note" not in r]
            cell += "; ρ(specificity, protect-one effect) vs ρ(weight error, effect): " + ", ".join(
                f"{r['id'].split('_')[0]} {_rho(r['specificity']['spearman'])} vs {_rho(r['weight_error']['spearman'])}"
                for r in rows
            )
        cells.append(cell)
    if not cells:
        return [[CLAIM, *STATEMENT, "—", "not run (needs inspect heads and export_heads.py)", "not run", "—"]]
    verdict = (
        "not comparable as one number: the log does not record its test; the measured shares, with the rule's "
        "false-positive share on a language split against itself, are in the cell"
    )
    return [[CLAIM, *STATEMENT, "—", "<br>".join(cells), verdict, "—"]]
