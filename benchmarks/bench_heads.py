"""Cost of the attention statistics (``inspect heads``) relative to one evaluation of the same documents, and the
peak memory of the command against the audit's bound: ratios from one run.

Documents: the selection split of UDHR for the 12 languages of the default panel, whole articles up to
``--max-tokens`` per language, cut into the same windows and batches for both sides. The model is loaded before
any span. Timed spans, each on the prepared batches:

- ``heads``: :func:`quant_disparity.inspect.attention.attention_sums` (the eager implementation, a forward hook on
  every attention module reducing each block's probabilities to per-document sums; the base model only, no LM
  head);
- ``evaluate``: :func:`quant_disparity.evaluate.score_documents` of the reference model, as an audit scores one
  model (forward pass with the model's own attention implementation, fused LM head, per-document NLL).

Each span runs once to warm up, then ``--repeats`` times in turn (:func:`common.interleaved`); the ratio divides
the medians. Memory: a child process runs :func:`quant_disparity.inspect.head_run.run_heads` as the command does
(it loads the model itself) on the same documents and reports its peak resident size (``VmHWM``) over the fp32
weight bytes plus the corpus bytes, the measure ``bench_memory.py`` holds the audit to (at most 2.2x). The machine
is shared: the 1-minute load average before and after is recorded.

    python benchmarks/bench_heads.py [--model gemma-3-270m] [--max-tokens 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import interleaved, median, panel_inputs, save

from quant_disparity.evaluate import Forward, score_documents
from quant_disparity.inspect.attention import attention_sums, script_ids

#: The audit's memory target in bench_memory.py: peak RSS over fp32 weights + corpus bytes.
AUDIT_BOUND = 2.2

CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
from common import peak_rss_bytes
import torch, transformers  # noqa: F401
base = peak_rss_bytes()
from quant_disparity.inspect.head_run import HeadsConfig, run_heads
cfg = HeadsConfig(**json.loads(sys.argv[1]))
r = run_heads(cfg)  # as the CLI runs it: the command loads the model itself
weights = r["model"]["n_params"] * 4
print(json.dumps({"peak_rss": peak_rss_bytes(), "baseline_rss": base, "fp32_weight_bytes": weights,
                  "counted_tokens": r["timing"]["counted_tokens"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    lm, inputs = panel_inputs(args.model, args.max_tokens)
    modmap, chosen, prepared = inputs.modmap, inputs.selection, inputs.prepared
    script_of, _ = script_ids(lm.tokenizer, sorted({t for b in prepared.batches for w in b for t in w.input_ids}))
    forward = Forward(lm.model)
    got = {}

    def heads() -> None:
        got["sums"] = attention_sums(lm.model, modmap, prepared, script_of)

    def evaluate() -> None:
        score_documents(forward, prepared)

    load_before = os.getloadavg()[0]
    times = interleaved({"heads": heads, "evaluate": evaluate}, repeats=args.repeats)
    ratio = median(times["heads"]) / median(times["evaluate"])
    cfg = {"model": args.model, "max_tokens": args.max_tokens, "n_boot": 1000}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cfg), str(Path(__file__).resolve().parent)],
        check=True,
        capture_output=True,
        text=True,
    )
    load_after = os.getloadavg()[0]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    corpus = sum(d.n_bytes for d in prepared.docs)
    budget = m["fp32_weight_bytes"] + corpus
    data = {
        "model": args.model,
        "langs": list(chosen.langs),
        "max_tokens_per_language": args.max_tokens,
        "documents": len(prepared.docs),
        "predicted_tokens": prepared.total_pred,
        "counted_queries": int(got["sums"].queries.sum()),
        "blocks": len(got["sums"].layers),
        "attention_implementation": {"statistics": "eager", "evaluation": lm.model.config._attn_implementation},
        "seconds": times,
        "ratio_heads_to_evaluation": ratio,
        "timed_span": "prepared batches and loaded model -> per-document attention sums (heads) / per-document NLL "
        "(evaluate)",
        "memory": {
            **m,
            "corpus_bytes": corpus,
            "peak_over_weights_plus_corpus": m["peak_rss"] / budget,
            "audit_bound": AUDIT_BOUND,
            "span": "a child process running inspect heads (load, statistics, bootstrap) on the same documents",
        },
        "load_average_1min": [load_before, load_after],
    }
    path = save("heads", data)
    print(
        f"attention statistics / one evaluation = {ratio:.2f} ({prepared.total_pred} tokens, {len(chosen.langs)} "
        f"languages); peak RSS {m['peak_rss'] / 2**30:.2f} GiB = {data['memory']['peak_over_weights_plus_corpus']:.2f}x "
        f"fp32 weights + corpus (audit bound {AUDIT_BOUND}x); load average {load_before:.1f} -> {load_after:.1f}; "
        f"wrote {path}"
    )


if __name__ == "__main__":
    main()
