"""Evaluation throughput vs the bare model forward on the same batches (target: overhead <= 10 %).

"Bare" is what any evaluation must at least do: ``model(input_ids, attention_mask).logits`` for every batch,
nothing computed from the logits. "Ours" is the full evaluation: per-token NLL over the whole vocabulary
(and, for the audit's paired run, KL and top-1 agreement against the reference, with the weights switched
between the two models for every batch). Same batches, same model, interleaved repetitions, medians.

    python benchmarks/bench_eval_overhead.py [--model gemma-3-270m] [--max-tokens 512]
"""

from __future__ import annotations

import argparse

import torch
from common import documents, interleaved, median, save

from quant_disparity.evaluate import EvalSettings, Forward, prepare, score_documents, tokenize
from quant_disparity.evaluate.forward import pack_batch
from quant_disparity.models import load_model
from quant_disparity.models.modules import build_module_map
from quant_disparity.quant import QuantEngine, parse_scheme


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    lm = load_model(args.model)
    docs = documents(lm.tokenizer, max_tokens=args.max_tokens)
    settings = EvalSettings()
    prepared = prepare(
        docs, tokenize(lm.tokenizer, docs), lm.prefix_token_id, settings, lm.info.max_length, tokenizer=lm.tokenizer
    )
    forward = Forward(lm.model)
    mm = build_module_map(lm.model)
    engine = QuantEngine(lm.model, mm)
    assignment = {n: parse_scheme("w4g128") for n in mm.default_targets()}
    engine.assign_(assignment)  # fill the quantization cache: this benchmark times evaluation only
    engine.restore_()
    batches = [pack_batch(batch, "cpu")[:2] for batch in prepared.batches]

    @torch.inference_mode()
    def bare():
        for ids, mask in batches:
            lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits

    def ours_single():
        return score_documents(forward, prepared)

    def ours_paired():
        out = score_documents(
            forward, prepared, use_reference=engine.restore_, use_model=lambda: engine.assign_(assignment)
        )
        engine.restore_()
        return out

    rows = interleaved({"bare": bare, "ours_single": ours_single, "ours_paired": ours_paired}, args.repeats)
    med = {k: median(v) for k, v in rows.items()}
    tokens = prepared.total_pred
    result = {
        "model": args.model,
        "documents": len(docs),
        "predicted_tokens": tokens,
        "batches": len(prepared.batches),
        "settings": settings.to_dict(),
        "seconds": rows,
        "median_seconds": med,
        "tokens_per_second": {k: tokens / v for k, v in med.items()},
        "overhead_single": med["ours_single"] / med["bare"] - 1,
        "overhead_paired": med["ours_paired"] / (2 * med["bare"]) - 1,
    }
    path = save("eval_overhead", result)
    print(f"{args.model}: {len(docs)} documents, {tokens} tokens, {len(prepared.batches)} batches")
    print(f"bare forward            {med['bare']:.2f} s  ({tokens / med['bare']:.0f} tokens/s)")
    print(f"ours, one model (NLL)   {med['ours_single']:.2f} s  overhead {100 * result['overhead_single']:+.1f}%")
    print(
        f"ours, paired (NLL, KL, top-1 vs reference) {med['ours_paired']:.2f} s  vs 2 x bare: overhead "
        f"{100 * result['overhead_paired']:+.1f}%"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
