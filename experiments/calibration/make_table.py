"""The calibration-language table of a run of study.toml (or smoke.toml): per language and scheme, Δbpb with its 95%
interval under each calibration; the ``target`` column takes, for each language, the row of the trial calibrated
on that language (plan ``PLAN.target-LANG``, or ``PLAN.t-LANG``). Reads the run's results.json; writes markdown.

    python experiments/calibration/make_table.py RUN_DIR [--out TABLE.md]
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


def table(results: dict) -> str:
    trials = results["trials"]
    langs = list(dict.fromkeys(lang for t in trials for lang in t["languages"]))
    # (scheme) -> calibration label -> lang -> cell
    cols: dict[str, dict[str, dict[str, dict]]] = {}
    for t in trials:
        plan = t["plan_name"]
        m = re.fullmatch(r"[^.]+\.(?:(t|target)-(.+)|(.+))", plan)
        per = cols.setdefault(t["scheme"], {})
        if m is None:  # an uncalibrated trial (RTN)
            per.setdefault("none", {}).update({lg: row["delta_bpb"] for lg, row in t["languages"].items()})
        elif m.group(1):  # a target trial: only its own language's row
            for lg, row in t["languages"].items():
                if lg.split("_")[0] == m.group(2).split("_")[0]:
                    per.setdefault("target", {})[lg] = row["delta_bpb"]
        else:
            per.setdefault(m.group(3), {}).update({lg: row["delta_bpb"] for lg, row in t["languages"].items()})
    out = [f"# Calibration-language table: {results['spec']['name']}", "",
           "Δbpb (quantized − full precision, bits per byte) on held-out documents, 95% paired bootstrap interval.", ""]  # fmt: skip
    for scheme, per in cols.items():
        labels = list(per)
        out += [f"## {scheme}", "", "| language | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for lg in langs:
            out.append(f"| {lg} | " + " | ".join(_fmt(per[c].get(lg)) for c in labels) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    found = sorted(args.run_dir.glob("*/results.json"))
    if not found:
        raise SystemExit(f"no results.json under {args.run_dir}")
    md = table(json.loads(found[-1].read_text(encoding="utf-8")))
    if args.out:
        args.out.write_text(md + "\n", encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
