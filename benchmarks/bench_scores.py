"""Peak memory of the per-language gradient scores against an audit of the same documents (default model).

Each command runs in its own fresh interpreter (:data:`quant_disparity.estimate.MEASURE_CHILD`, as the CLI runs
it) and reports its peak resident size (``VmHWM``): ``scores --scores fisher,grad_sq`` (a backward pass per
window through the decoder blocks, the 262k-vocabulary head's loss in chunks of ``protect.data.TOKEN_CHUNK``
positions), ``scores --scores act_error,hessian_diag`` (the input Gram matrices only) and an ``audit`` of the
same languages, split and token cap. Ratios: each peak over the audit's, and (peak - the bare interpreter with
the libraries) over the fp32 weight bytes, the measure ``bench_memory.py`` holds the audit to (at most 2.2).

    python benchmarks/bench_scores.py [--model gemma-3-270m] [--langs eng,heb,amh] [--max-tokens 512]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import save

from quant_disparity.estimate import MEASURE_CHILD, _measure_baseline


def peak(args: list[str]) -> int:
    out = subprocess.run([sys.executable, "-c", MEASURE_CHILD, *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--langs", default="eng,heb,amh")
    ap.add_argument("--max-tokens", type=int, default=512)
    a = ap.parse_args()
    common = ["--model", a.model, "--langs", a.langs, "--max-tokens", str(a.max_tokens)]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        peaks = {
            "audit": peak(["audit", *common, "--split", "select", "--out", f"{tmp}/audit"]),
            "scores_fisher": peak(["scores", *common, "--scores", "fisher,grad_sq", "--out", f"{tmp}/f"]),
            "scores_gram": peak(["scores", *common, "--scores", "act_error,hessian_diag", "--out", f"{tmp}/g"]),
        }
        n_params = json.loads(Path(f"{tmp}/audit/audit.json").read_text())["model"]["n_params"]
    base = _measure_baseline()
    weights = n_params * 4
    result = {
        "model": a.model,
        "langs": a.langs,
        "max_tokens": a.max_tokens,
        "peak_bytes": peaks,
        "baseline_bytes": base,
        "fp32_weight_bytes": weights,
        "over_audit": {k: v / peaks["audit"] for k, v in peaks.items()},
        "over_weights": {k: (v - base) / weights for k, v in peaks.items()},
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }
    save("scores", result)
    for k, v in peaks.items():
        print(
            f"{k}: peak {v / 2**30:.2f} GiB, {result['over_audit'][k]:.2f} x the audit's, "
            f"(peak - libraries) / fp32 weights = {result['over_weights'][k]:.2f}"
        )
    print(f"load average {load_before} -> {result['load_average']['after']}")


if __name__ == "__main__":
    main()
