"""A per-layer protect-one sweep: the locate engine vs the naive way, and its cost per configuration.

Naive (as the original log did it): for every configuration a fresh copy of the model, every tensor of the
configuration quantized from scratch, and every document scored with the model's own forward pass
(``logits`` -> ``log_softmax`` -> target log-probabilities); the full-precision reference is scored once.
Ours: ``quant_disparity.evaluate.sweep`` (shared reference, cached quantized tensors switched in place,
replayed leading blocks, fused head). Both score the same batches; their per-document NLLs are compared.
The naive way computes NLL only; ours also computes KL and top-1 agreement for every configuration.

Also reported: ours relative to (configurations x one full evaluation of a single configuration with our own
evaluator), and the sweep's peak memory relative to the fp32 weight bytes (a child process, ``ru_maxrss``).

    python benchmarks/bench_locate.py [--model gemma-3-270m] [--max-tokens 256]

``--granularity head``: a head-level protect-one sweep instead (one unit per query head, one per key/value
head), no naive run: its cost per configuration relative to one full evaluation, next to a per-layer sweep and
a configuration that changes no block (all blocks replayed: what the output layer and scoring alone cost) in the
same run, which is what bounds a head configuration from below.

    python benchmarks/bench_locate.py --granularity head --langs eng_Latn,heb_Hebr,cmn_Hans --max-tokens 340
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import LANGS, documents, save
from common import RESULTS as RESULTS_DIR

from quant_disparity.evaluate import EvalSettings, Forward, prepare, score_documents, tokenize
from quant_disparity.evaluate.forward import pack_batch
from quant_disparity.evaluate.sweep import sweep
from quant_disparity.locate import build_configs, make_units
from quant_disparity.models import load_model
from quant_disparity.models.modules import build_module_map, from_2d, weight_2d
from quant_disparity.quant import QuantEngine, parse_scheme

MEMORY_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
from common import peak_rss_bytes
import torch, transformers  # noqa: F401
base = peak_rss_bytes()
from quant_disparity.locate import LocateConfig, run_locate
args = json.loads(sys.argv[1])
# as `quant-disparity locate` runs it: the sweep loads the model itself
r = run_locate(LocateConfig(model=args["model"], langs=tuple(args["langs"]), max_tokens=args["max_tokens"],
                            split="all", n_boot=200)).to_dict()
peak = peak_rss_bytes()
print(json.dumps({"peak_rss": peak, "baseline_rss": base, "fp32_weight_bytes": r["model"]["n_params"] * 4}))
"""


def memory(args) -> dict:
    """Peak RSS of `quant-disparity locate` (as the CLI runs it) in a child process."""
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            MEMORY_CHILD,
            json.dumps({"model": args.model, "langs": list(LANGS), "max_tokens": args.max_tokens}),
            str(Path(__file__).resolve().parent),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(child.stdout.strip().splitlines()[-1])


@torch.inference_mode()
def naive_nll(model, batches, n_docs) -> np.ndarray:
    nll = np.zeros(n_docs)
    for batch in batches:
        ids, mask, *_ = pack_batch(batch, "cpu")
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), -1)
        for b, w in enumerate(batch):
            p0 = w.first_scored_position
            tgt = torch.tensor(w.input_ids[p0 + 1 :])
            nll[w.doc] -= logp[b, p0 : len(w.input_ids) - 1].gather(1, tgt[:, None]).sum().item()
    return nll


def _inputs(model: str, langs, max_tokens: int):
    """The model, its documents, those prepared in batches of 2048 tokens, and its module map."""
    lm = load_model(model)
    docs = documents(lm.tokenizer, langs=langs, max_tokens=max_tokens)
    settings = EvalSettings(batch_tokens=2048)
    prepared = prepare(
        docs, tokenize(lm.tokenizer, docs), lm.prefix_token_id, settings, lm.info.max_length, tokenizer=lm.tokenizer
    )
    return lm, docs, prepared, build_module_map(lm.model)


def timed(fn) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds (all its threads) of ``fn()``."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def head_sweep(args) -> None:
    """Head-level protect-one sweep: seconds per configuration relative to one full evaluation, with a layer
    sweep and a no-block configuration (the floor: output layer and scoring) measured in the same run."""
    import os

    langs = tuple(args.langs.split(",")) if args.langs else LANGS
    lm, docs, prepared, mm = _inputs(args.model, langs, args.max_tokens)
    scheme = parse_scheme(args.scheme)
    universe = mm.default_targets()
    engine = QuantEngine(lm.model, mm)
    forward = Forward(lm.model)
    load_before = os.getloadavg()
    all_q = {t: scheme for t in universe}

    def one_evaluation() -> tuple[float, float]:
        engine.assign_(all_q)
        got = timed(lambda: score_documents(forward, prepared))
        engine.restore_()
        return got

    # One full evaluation is timed before, between and after the sweeps (both sides over the same span), in wall
    # seconds and in this process's CPU seconds: on a shared machine the CPU-time ratio is the one that load
    # changes least.
    one = [one_evaluation()]
    sweeps = {}
    for granularity in ("head", "layer"):
        units = make_units(mm, universe, granularity)
        configs = build_configs(universe, units, [], scheme, "protect-one", mm)
        for cfg in configs.values():  # fill the tensor cache first, as `locate` does: evaluation timed alone
            engine.assign_(cfg)
        engine.restore_()
        box: dict = {}
        secs, cpu = timed(
            lambda configs=configs: box.update(got=sweep(forward, prepared, engine, configs, bases=["all"]))
        )
        sweeps[granularity] = {
            "configurations": len(configs),
            "seconds": secs,
            "cpu_seconds": cpu,
            "replay": box["got"].stats,
        }
        print(f"{granularity}: {len(configs)} configurations in {secs:.1f} s ({cpu:.1f} CPU s)", flush=True)
        one.append(one_evaluation())
    # the floor: a configuration equal to its base changes no block, so only the output layer and scoring run
    base_s, base_c = timed(lambda: sweep(forward, prepared, engine, {"all": all_q}, bases=["all"]))
    pair_s, pair_c = timed(lambda: sweep(forward, prepared, engine, {"all": all_q, "same": dict(all_q)}, bases=["all"]))
    load_after = os.getloadavg()
    one_s = sum(w for w, _ in one) / len(one)
    one_c = sum(c for _, c in one) / len(one)
    per = {g: v["seconds"] / v["configurations"] / one_s for g, v in sweeps.items()}
    per_cpu = {g: v["cpu_seconds"] / v["configurations"] / one_c for g, v in sweeps.items()}
    result = {
        "model": args.model,
        "scheme": args.scheme,
        "languages": list(langs),
        "documents": len(docs),
        "tokens_per_configuration": prepared.total_pred,
        "one_full_evaluation_s": one_s,
        "one_full_evaluation_cpu_s": one_c,
        "one_full_evaluation_runs": [{"seconds": w, "cpu_seconds": c} for w, c in one],
        "sweeps": sweeps,
        "cost_per_configuration_vs_one_evaluation": per,
        "cpu_cost_per_configuration_vs_one_evaluation": per_cpu,
        "no_block_configuration_vs_one_evaluation": (pair_s - base_s) / one_s,
        "no_block_configuration_vs_one_evaluation_cpu": (pair_c - base_c) / one_c,
        "params": {
            "lm_head": next(p.numel for p in mm.params if "lm_head" in p.components),
            "block_linear": sum(mm[t].numel for t in universe),
        },
        "load_average_1min": {"before": load_before[0], "after": load_after[0]},
    }
    path = save(f"locate-head-{args.model}", result)
    print(
        f"cost per configuration vs one full evaluation ({one_s:.1f} s, {one_c:.1f} CPU s): head {per['head']:.2f} "
        f"(CPU {per_cpu['head']:.2f}), layer {per['layer']:.2f} (CPU {per_cpu['layer']:.2f}); a configuration "
        f"changing no block: {result['no_block_configuration_vs_one_evaluation']:.2f}"
    )
    print(f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}; wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--scheme", default="w4g128")
    ap.add_argument("--memory-only", action="store_true", help="only re-measure the sweep's peak memory")
    ap.add_argument("--granularity", choices=("layer", "head"), default="layer")
    ap.add_argument("--langs", help="comma-separated languages (head sweep; default the benchmark's four)")
    args = ap.parse_args()
    if args.granularity == "head":
        head_sweep(args)
        return
    if args.memory_only:
        path = RESULTS_DIR / f"locate-{args.model}.json"
        result = json.loads(path.read_text())
        mem = memory(args)
        result["memory"] = {**mem, "peak_over_fp32_weights": mem["peak_rss"] / mem["fp32_weight_bytes"]}
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(
            f"peak memory of a locate run: {mem['peak_rss'] / 2**30:.2f} GiB = "
            f"{result['memory']['peak_over_fp32_weights']:.2f}x fp32 weights (target <= 2.5x)"
        )
        return

    lm, docs, prepared, mm = _inputs(args.model, LANGS, args.max_tokens)
    scheme = parse_scheme(args.scheme)
    universe = mm.default_targets()
    units = make_units(mm, universe, "layer")
    configs = build_configs(universe, units, [], scheme, "protect-one")
    unit_configs = {u.name: configs[u.name] for u in units}
    print(
        f"{args.model}: {len(units)} layer units (+ the all-quantized baseline), {len(docs)} documents, "
        f"{prepared.total_pred} tokens",
        flush=True,
    )

    # -- naive ----------------------------------------------------------------------------------------------
    t = time.perf_counter()
    naive = {"reference": naive_nll(lm.model, prepared.batches, len(docs))}
    for name, cfg in configs.items():
        model = copy.deepcopy(lm.model)
        for tensor, s in cfg.items():
            info = mm[tensor]
            p = model.get_parameter(tensor)
            with torch.no_grad():
                p.data = from_2d(s.fake_quantize(weight_2d(p.data, info)), info)
        naive[name] = naive_nll(model, prepared.batches, len(docs))
        del model
    naive_s = time.perf_counter() - t
    print(f"naive: {naive_s:.1f} s", flush=True)

    # -- ours -----------------------------------------------------------------------------------------------
    engine = QuantEngine(lm.model, mm)
    forward = Forward(lm.model)
    t = time.perf_counter()
    ours = sweep(forward, prepared, engine, configs, bases=["all"])
    ours_s = time.perf_counter() - t
    print(
        f"ours: {ours_s:.1f} s (quantization included; replay saved "
        f"{100 * ours.stats['block_work_saved']:.0f}% of block work)",
        flush=True,
    )

    # -- one full evaluation of a single configuration with our evaluator, for the cost ratio -----------------
    engine.assign_(unit_configs[units[0].name])
    t = time.perf_counter()
    score_documents(forward, prepared)
    one_s = time.perf_counter() - t
    engine.restore_()

    diffs = [float(np.max(np.abs(ours.nll[n] - naive[n]) / naive[n])) for n in configs]
    diffs.append(float(np.max(np.abs(ours.nll_ref - naive["reference"]) / naive["reference"])))

    mem = memory(args)
    result = {
        "model": args.model,
        "scheme": args.scheme,
        "configurations": len(configs),
        "documents": len(docs),
        "tokens_per_configuration": prepared.total_pred,
        "seconds": {"naive": naive_s, "ours": ours_s, "one_full_evaluation": one_s},
        "speedup_vs_naive": naive_s / ours_s,
        "cost_vs_configs_x_one_evaluation": ours_s / (len(configs) * one_s),
        "max_relative_nll_difference_vs_naive": max(diffs),
        "replay": ours.stats,
        # the output layer scores every token of every configuration: its share of one evaluation's weights
        "params": {
            "lm_head": next(p.numel for p in mm.params if "lm_head" in p.components),
            "block_linear": sum(mm[t].numel for t in universe),
        },
        "memory": {**mem, "peak_over_fp32_weights": mem["peak_rss"] / mem["fp32_weight_bytes"]},
    }
    path = save(f"locate-{args.model}", result)
    print(f"speed-up vs naive: {result['speedup_vs_naive']:.2f}x (target >= 3x)")
    print(
        f"cost vs {len(configs)} x one full evaluation ({one_s:.1f} s): "
        f"{result['cost_vs_configs_x_one_evaluation']:.2f}"
    )
    print(f"max relative NLL difference ours vs naive: {max(diffs):.1e}")
    print(
        f"peak memory of a locate run: {mem['peak_rss'] / 2**30:.2f} GiB = "
        f"{result['memory']['peak_over_fp32_weights']:.2f}x fp32 weights (target <= 2.5x); interpreter + torch "
        f"+ transformers alone {mem['baseline_rss'] / 2**30:.2f} GiB"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
