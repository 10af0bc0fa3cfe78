"""Print the benchmark table quoted in the README from benchmarks/results/*.json."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict | None:
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def main() -> None:
    rows = []
    e = load("eval_overhead")
    if e:
        rows.append(("evaluation vs bare forward, same batches (`bench_eval_overhead.py`)", "overhead ≤ 10 %",
                     f"one model: {100 * e['overhead_single']:+.1f} %; paired with KL and top-1 vs 2 × bare: "
                     f"{100 * e['overhead_paired']:+.1f} % ({e['model']}, {e['predicted_tokens']} tokens)"))
    lm = load("lm_eval")
    if lm:
        rows.append(("bits per byte vs lm-evaluation-harness, same documents (`bench_lm_eval.py`)",
                     "≤ 1e-4 relative; ≥ 2× faster",
                     f"max relative difference {lm['max_relative_difference']:.1e}; {lm['speedup']:.2f}× faster "
                     f"({lm['model']}, {lm['predicted_tokens']} tokens, lm-eval batch size {lm['lm_eval_batch_size']})"))
    m = load("memory")
    if m:
        rows.append(("peak memory of an audit (`bench_memory.py`)", "≤ 2.2 × (fp32 weights + corpus)",
                     f"{m['peak_over_weights_plus_corpus']:.2f}× ({m['peak_rss'] / 2**30:.2f} GiB peak RSS incl. "
                     f"{m['baseline_rss'] / 2**30:.2f} GiB interpreter and libraries; {m['model']}, "
                     f"{m['predicted_tokens']} tokens)"))
    for model in ("gemma-3-270m", "smollm2-135m"):
        loc = load(f"locate-{model}")
        if loc:
            # The targets are for the default model; the contrast model's rows are for comparison.
            default = model == "gemma-3-270m"
            rows.append((f"per-layer protect-one sweep vs the naive way, {model} (`bench_locate.py`)",
                         "≥ 3× faster" if default else "(contrast model)", f"{loc['speedup_vs_naive']:.2f}× ({loc['configurations']} configurations, "
                         f"{loc['tokens_per_configuration']} tokens each; NLLs agree to "
                         f"{loc['max_relative_nll_difference_vs_naive']:.0e})"))
            rows.append((f"sweep cost vs configurations × one full evaluation, {model}", "report",
                         f"{loc['cost_vs_configs_x_one_evaluation']:.2f}"))
            mem = loc["memory"]
            rows.append((f"peak memory of a sweep, {model}", "≤ 2.5 × fp32 weights" if default else "(contrast model)",
                         f"{mem['peak_over_fp32_weights']:.2f}× ({mem['peak_rss'] / 2**30:.2f} GiB peak RSS, "
                         f"{mem['fp32_weight_bytes'] / 2**30:.2f} GiB fp32 weights)"))
    r = load("runner")
    if r:
        rows.append(("experiment runner + store vs the library directly (`bench_runner.py`)", "overhead < 5 %",
                     f"{100 * r['overhead']:+.1f} % ({r['trials']} trials, {r['model']})"))
    print("| benchmark | target | measured |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
