"""Real vs simulated on the default model: each library's own quantized forward (HQQLinear, quanto's frozen QLinear,
float16 compute) against our evaluation of its dequantized weights, per language, on held-out documents.

For every scheme: the quantization's damage (Δbpb, ours) and the library forward minus ours (bpb, paired bootstrap
interval over documents), the KL of the library's next-token distributions from ours and their top-1 agreement,
and whether they agree within :data:`quant_disparity.evaluate.real.TOLERANCE_BPB` (or 5 % of the damage).

    python benchmarks/bench_real_forward.py [--model gemma-3-270m] [--langs eng,heb,amh,cmn_Hans] [--max-tokens 512]
        [--schemes hqq:w4g64 --tag hqq]   # a run of its own: results/real_forward-MODEL-TAG.json

The libraries' float16 layers are slow on a CPU (quanto:w8 took 25 minutes on 4 languages x 512 tokens), so a
slow scheme is run on its own, with fewer tokens, under a tag; benchmarks/summary.py reports every such file.
"""

from __future__ import annotations

import argparse
import os
import time

from common import save

from quant_disparity.audit import quantization_targets
from quant_disparity.config import AuditConfig
from quant_disparity.evaluate import Forward
from quant_disparity.evaluate.real import real_vs_simulated
from quant_disparity.inputs import check_model_and_corpus, load_inputs
from quant_disparity.quant import engine_for, parse_scheme

SCHEMES = ("quanto:w8", "quanto:w4", "hqq:w4g64")  # quickest first; the result is saved after each


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--langs", default="eng,heb,amh,cmn_Hans")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--tag", default="", help="save as real_forward-MODEL-TAG (a run beside the default one)")
    a = ap.parse_args()
    schemes = [parse_scheme(s) for s in a.schemes.split(",")]
    cfg = AuditConfig(model=a.model, langs=tuple(a.langs.split(",")), split="heldout", max_tokens=a.max_tokens)
    corpus, _ = check_model_and_corpus(cfg.runtime, cfg.selection)
    load_before = os.getloadavg()
    inputs = load_inputs(cfg.runtime, corpus, cfg.selection, cfg.eval, log=print)
    lm, modmap, prepared = inputs.lm, inputs.modmap, inputs.prepared
    langs = list(inputs.selection.docs)
    n_docs = [len(inputs.selection.docs[lang]) for lang in langs]
    targets = quantization_targets(modmap, ())
    forward = Forward(lm.model)
    runs: dict[str, dict] = {}

    def write():
        return save(
            f"real_forward-{a.model}" + (f"-{a.tag}" if a.tag else ""),
            {
                "model": a.model,
                "langs": langs,
                "split": "heldout",
                "max_tokens": a.max_tokens,
                "quantized_tensors": len(targets),
                "predicted_tokens": prepared.total_pred,
                "schemes_asked": [s.name for s in schemes],
                "complete": len(runs) == len(schemes),
                "runs": runs,
                "agree": all(r["agree"] for r in runs.values()),
                "load_average": {"before": load_before, "after": os.getloadavg()},
            },
        )

    for scheme in schemes:
        t = time.perf_counter()
        engine = engine_for(lm, modmap)
        result = real_vs_simulated(
            forward, engine, prepared, {n: scheme for n in targets}, langs, n_docs, vocab_chunk=cfg.eval.vocab_chunk
        )
        result["seconds"] = round(time.perf_counter() - t, 1)
        result["load_average_after"] = os.getloadavg()
        runs[scheme.name] = result
        del engine
        for lang, row in result["languages"].items():
            d, diff = row["delta_bpb_ours"], row["library_minus_ours_bpb"]
            print(
                f"{scheme.name} {lang}: Δbpb ours {d['value']:+.4f}; library - ours {diff['value']:+.2e} "
                f"{diff['ci95']}; KL {row['kl_bits_library_from_ours']:.2e} bits; "
                f"top-1 {row['top1_agreement_library_vs_ours']:.4f}; agree {row['agree']}",
                flush=True,
            )
        path = write()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
