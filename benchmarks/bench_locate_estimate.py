"""``locate --estimate SCORE --top K`` against the full sweep, in one run on one loaded model: for each score, how
much of the full per-layer protect-one sweep's answer the K measured units hold (per language: the share of the
full sweep's top-K units among them, and whether its most effective unit is one of them) and the estimated run's
wall time as a share of the full sweep's (scoring included). Both sides are timed in this process, one after the
other, on the same documents; the load average before and after is recorded (time ratios are only meaningful on a
quiet machine).

    python benchmarks/bench_locate_estimate.py [--model gemma-3-270m] [--scores fisher,rel_frobenius,random] [--top 5]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from common import save

from quant_disparity.corpus.selection import DEFAULT_PANEL as PANEL
from quant_disparity.locate import LocateConfig, run_locate
from quant_disparity.models import load_model
from quant_disparity.protect.estimate import recovery


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--scores", default="fisher,rel_frobenius,random")
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--langs", default=",".join(PANEL))
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--scheme", default="w4g128")
    args = ap.parse_args()
    langs = tuple(args.langs.split(","))
    load_before = os.getloadavg()
    lm = load_model(args.model)
    base = {"model": args.model, "langs": langs, "max_tokens": args.max_tokens, "scheme": args.scheme}
    t0 = time.perf_counter()
    full = run_locate(LocateConfig(**base), lm=lm).to_dict()
    t_full = time.perf_counter() - t0
    rows = []
    for score in args.scores.split(","):
        t0 = time.perf_counter()
        est = run_locate(LocateConfig(**base, estimate=score, top=args.top), lm=lm).to_dict()
        t_est = time.perf_counter() - t0
        rec = recovery(full, est["estimate"]["measured_units"], args.top)
        shares = [r["share_of_full_top"] for r in rec.values() if r["share_of_full_top"] is not None]
        rows.append(
            {
                "score": score,
                "measured_units": est["estimate"]["measured_units"],
                "seconds": round(t_est, 2),
                "score_seconds": est["estimate"]["score_s"],
                "time_share_of_full": round(t_est / t_full, 4),
                "mean_share_of_full_top": round(float(np.mean(shares)), 4),
                "best_found_in": sum(r["best_found"] for r in rec.values()),
                "per_language": rec,
            }
        )
        print(
            f"{score}: measured {', '.join(rows[-1]['measured_units'])}; mean share of the full top-{args.top} "
            f"{rows[-1]['mean_share_of_full_top']:.2f}; best unit found in {rows[-1]['best_found_in']}/{len(rec)} "
            f"languages; time {t_est:.0f} s = {t_est / t_full:.2f} of the full sweep's {t_full:.0f} s"
        )
    n_units = len(full["units"])
    chance = args.top / n_units
    path = save(
        f"locate_estimate-{args.model}",
        {
            **base,
            "langs": list(langs),
            "top": args.top,
            "units": n_units,
            "chance_share": round(chance, 4),
            "full_seconds": round(t_full, 2),
            "full_configurations": full["timing"]["configurations"],
            "rows": rows,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
    )
    print(f"chance: {chance:.2f} of the top-{args.top} per language; wrote {path}")


if __name__ == "__main__":
    main()
