"""Peak memory of an audit vs the fp32 weight bytes plus the corpus (target: at most 2.2x).

Runs an audit in a child process exactly as ``quant-disparity audit`` does (the audit loads the model itself)
and reads the child's peak resident set size (``VmHWM``), which includes the libraries, the tokenizer and
the weights' pages. The child also reports the resident size of the bare interpreter with torch and
transformers imported, so the part that is the libraries' and not the audit's can be seen.

    python benchmarks/bench_memory.py [--model gemma-3-270m] [--max-tokens 2048]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import save

CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
from common import peak_rss_bytes
import torch, transformers  # noqa: F401
base = peak_rss_bytes()
from quant_disparity.audit import run_audit
from quant_disparity.config import AuditConfig
cfg = AuditConfig(**json.loads(sys.argv[1]))
r = run_audit(cfg)  # as the CLI runs it: the audit loads the model itself
weights = r.model["n_params"] * 4
corpus = sum(row["n_bytes"] for row in r.to_dict()["languages"])
peak = peak_rss_bytes()
print(json.dumps({"peak_rss": peak, "baseline_rss": base, "fp32_weight_bytes": weights, "corpus_bytes": corpus,
                  "predicted_tokens": r.timing["predicted_tokens"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--max-tokens", type=int, default=2048)
    args = ap.parse_args()
    cfg = {"model": args.model, "max_tokens": args.max_tokens}
    with tempfile.TemporaryDirectory():
        out = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(cfg), str(Path(__file__).resolve().parent)],
            check=True,
            capture_output=True,
            text=True,
        )
    m = json.loads(out.stdout.strip().splitlines()[-1])
    budget = m["fp32_weight_bytes"] + m["corpus_bytes"]
    result = {
        "model": args.model,
        "config": cfg,
        **m,
        "peak_over_weights_plus_corpus": m["peak_rss"] / budget,
        "peak_minus_baseline_over_weights_plus_corpus": (m["peak_rss"] - m["baseline_rss"]) / budget,
    }
    path = save("memory", result)
    gib = 2**30
    print(f"{args.model}: fp32 weights {m['fp32_weight_bytes'] / gib:.2f} GiB, corpus {m['corpus_bytes'] / 1e3:.0f} kB")
    print(
        f"peak RSS {m['peak_rss'] / gib:.2f} GiB = {result['peak_over_weights_plus_corpus']:.2f}x (target <= 2.2x); "
        f"interpreter + torch + transformers alone {m['baseline_rss'] / gib:.2f} GiB"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
