"""REPLICATION.md row for the log's claim that damage follows the neurons a language activates (C21, H5.3c), from
the committed ``results/neurons-MODEL.json`` (the ``neurons.json`` of ``quant-disparity inspect neurons
--protect``).

Every number is read from that file; the only typed text is the log's statement and the rule that turns the
paired intervals into a verdict (written in the cell).
"""

from __future__ import annotations

import json
from pathlib import Path

MODELS = ("gemma-3-270m", "smollm2-135m")
STATEMENT = ("Damage follows the neurons a language activates (H5.3c)", "language-activation correlation; untested")


def _ci(e: dict, k: float = 1000.0) -> str:
    v, ci = e.get("value"), e.get("ci95")
    if v is None:
        return "undefined"
    return f"{k * v:+.1f}" + (f" [{k * ci[0]:+.1f}, {k * ci[1]:+.1f}]" if ci else " (no interval)")


def _side(e: dict) -> int:
    """+1 when the interval lies above zero, -1 below, 0 when it contains zero or there is none."""
    ci = e.get("ci95")
    return 0 if not ci else 1 if ci[0] > 0 else -1 if ci[1] < 0 else 0


def neuron_rows(export: Path) -> list[list[str]]:
    """The C21 row in REPLICATION.md's columns (claim, statement, the log, log's setup, sound, verdict, family-wise)."""
    cells, verdicts = [], []
    for model in MODELS:
        path = export / f"neurons-{model}.json"
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        p = d["protection"]
        langs = p["languages"]
        parts = []
        for lang in p["rows"]:
            diff = langs[lang]["differences"][lang]
            other = next(x["source"] for x in p["plans"] if x["row"] == lang and x["kind"] == "other")
            n = next(x["neurons"] for x in p["plans"] if x["row"] == lang and x["kind"] == "own")
            sides = (_side(diff["own-random"]), _side(diff["own-other"]))
            verdict = "holds" if sides == (1, 1) else "does not hold" if -1 in sides else "inconclusive"
            verdicts.append(verdict)
            parts.append(
                f"{lang} ({n} own neurons): own − random {_ci(diff['own-random'])}, own − {other}'s "
                f"{_ci(diff['own-other'])} → {verdict}"
            )
        docs = sorted({v["n_docs"] for v in langs.values()})
        cells.append(
            f"{model} ({p['scheme']}, {p['split']}, {'/'.join(map(str, docs))} documents per language; LAPE neurons "
            f"of {len(d['languages'])} languages, recovered damage in 10⁻³ bpb at equal bits): " + "; ".join(parts)
        )
    if not cells:
        return [["C21", *STATEMENT, "—", "not run (needs inspect neurons --protect)", "not run", "—"]]
    s = set(verdicts)
    verdict = s.pop() if len(s) == 1 else "mixed (language-specific)"
    rule = (
        "rule per language: holds when keeping its own neurons recovers more of its damage than as many random "
        "neurons and than another language's, both paired intervals above zero; does not hold when either lies "
        "below zero"
    )
    return [["C21", *STATEMENT, "—", "<br>".join(cells), f"{verdict} ({rule})", "—"]]
