"""Cost of collecting the neuron firing statistics (``inspect neurons``) relative to one evaluation of the same
documents: a ratio from one run.

Documents: the selection split of UDHR for the 12 languages of the default panel, whole articles up to
``--max-tokens`` per language, cut into the same windows and batches for both sides. The model is loaded before
any span. Timed spans, each on the prepared batches:

- ``neurons``: :func:`quant_disparity.inspect.neurons.count_firing` (forward hooks on every block's MLP, counts
  per block, neuron and language; the base model only, no LM head);
- ``evaluate``: :func:`quant_disparity.evaluate.score_documents` of the reference model, as an audit scores one
  model (forward pass, fused LM head, per-document NLL).

Each span runs once to warm up, then ``--repeats`` times in turn (:func:`common.interleaved`); the ratio divides
the medians. The machine is shared: the 1-minute load average before and after is recorded.

    python benchmarks/bench_neurons.py [--model gemma-3-270m] [--max-tokens 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os

from common import interleaved, median, panel_inputs, save

from quant_disparity.evaluate import Forward, score_documents
from quant_disparity.inspect.neurons import count_firing


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    lm, inputs = panel_inputs(args.model, args.max_tokens)
    modmap, chosen, prepared = inputs.modmap, inputs.selection, inputs.prepared
    lang_of_doc = [i for i, lang in enumerate(chosen.langs) for _ in chosen.docs[lang]]
    forward = Forward(lm.model)
    got = {}

    def neurons() -> None:
        got["counts"] = count_firing(lm.model, modmap, prepared, lang_of_doc, len(chosen.langs))

    def evaluate() -> None:
        score_documents(forward, prepared)

    load_before = os.getloadavg()[0]
    times = interleaved({"neurons": neurons, "evaluate": evaluate}, repeats=args.repeats)
    load_after = os.getloadavg()[0]
    ratio = median(times["neurons"]) / median(times["evaluate"])
    data = {
        "model": args.model,
        "langs": list(chosen.langs),
        "max_tokens_per_language": args.max_tokens,
        "documents": len(prepared.docs),
        "predicted_tokens": prepared.total_pred,
        "counted_tokens": int(got["counts"].tokens.sum()),
        "blocks": len(got["counts"].layers),
        "seconds": times,
        "ratio_neurons_to_evaluation": ratio,
        "timed_span": "prepared batches and loaded model -> firing counts (neurons) / per-document NLL (evaluate)",
        "load_average_1min": [load_before, load_after],
    }
    path = save("neurons", data)
    print(
        f"neuron statistics / one evaluation = {ratio:.2f} ({prepared.total_pred} tokens, {len(chosen.langs)} "
        f"languages, load average {load_before:.1f} -> {load_after:.1f}); wrote {path}"
    )


if __name__ == "__main__":
    main()
