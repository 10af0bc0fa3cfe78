"""search on the default model: the searched plan against the uniform scheme at the same effective bits, and the
search's wall time against exhaustively evaluating every single-unit and pair protection.

One run: ``quant_disparity.protect.search.run_search`` (base w3g128, protected units at w8g128, layer units, six
languages of the panel by default (Latin, Cyrillic, Hebrew, Devanagari, Ethiopic; sized for a loaded 2-core
machine), objective ``worst``, a frontier of bit budgets that includes the uniform w4g128's effective
bits), then a sample of pair protections timed with the same sweep machinery on the same selection documents;
the pairs' total is extrapolated from the sample (said so in the result). The load average is recorded before
and after, since the machine is shared.

    python benchmarks/bench_search.py [--langs ...] [--max-tokens 128] [--heldout-max-tokens 256] [--pair-sample 4]
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

from common import save

from quant_disparity.audit import quantization_targets
from quant_disparity.evaluate import Forward
from quant_disparity.evaluate.sweep import sweep
from quant_disparity.inputs import load_inputs
from quant_disparity.locate import make_units
from quant_disparity.models import load_model
from quant_disparity.models.modules import build_module_map
from quant_disparity.protect.search import SearchConfig, assignment_of, run_search, unit_costs, validate
from quant_disparity.provenance import git_revision
from quant_disparity.quant import engine_for, parse_scheme
from quant_disparity.report.search import search_markdown


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--langs", default="eng_Latn,fra_Latn,rus_Cyrl,heb_Hebr,hin_Deva,amh_Ethi")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--heldout-max-tokens", type=int, default=256)
    ap.add_argument("--pair-sample", type=int, default=4)
    ap.add_argument("--refine", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    load_before = os.getloadavg()
    revision = git_revision()  # the code measured (the tree may move on while this runs)
    lm = load_model(args.model)
    modmap = build_module_map(lm.model)
    mm_universe = quantization_targets(modmap, ())
    units = make_units(modmap, mm_universe, "layer")
    w3, w4, w8 = (parse_scheme(s) for s in ("w3g128", "w4g128", "w8g128"))
    base_cost = unit_costs(modmap, mm_universe, units, w3, w8)
    w4_bits = unit_costs(modmap, mm_universe, units, w4, w8).base_bits_per_weight
    w3_bits = base_cost.base_bits_per_weight
    frontier = (round(w3_bits + 0.5, 4), w4_bits, round(w3_bits + 1.75, 4))
    langs = tuple(args.langs.split(","))
    cfg = SearchConfig(
        model=args.model,
        scheme="w3g128",
        protect="w8g128",
        granularity="layer",
        objective="worst",
        frontier=frontier,
        langs=langs,
        uniform=("w3g128", "w4g128", "w8g128"),
        refine=args.refine,
        max_tokens=args.max_tokens,
        heldout_max_tokens=args.heldout_max_tokens,
        n_boot=args.n_boot,
    )
    t0 = time.perf_counter()
    data = run_search(cfg, lm=lm, log=print)
    t_search_total = time.perf_counter() - t0
    search_s = data["timing"]["search_s"]  # protect-one sweep + refinement, on the selection split

    # exhaustive: every single-unit protection (the protect-one sweep is exactly that) and every pair; a sample
    # of pairs is timed with the same sweep machinery on the same documents, the rest extrapolated
    _, _, _, corpus, _ = validate(cfg)
    sel = load_inputs(cfg.runtime, corpus, cfg.selection, cfg.eval, lm=lm)
    pairs = list(itertools.combinations(units, 2))
    step = max(1, len(pairs) // args.pair_sample)
    sample = pairs[::step][: args.pair_sample]
    configs = {"base": {t: w3 for t in mm_universe}}
    for a, b in sample:
        configs[f"{a.name}+{b.name}"] = assignment_of(mm_universe, [a, b], w3, w8)
    engine = engine_for(lm, modmap)
    t1 = time.perf_counter()
    sweep(Forward(lm.model), sel.prepared, engine, configs, bases=["base"], reuse=True)
    t_pairs = time.perf_counter() - t1
    per_pair = t_pairs / len(configs)  # the base run counted as one configuration of the sample
    singles_s = data["timing"]["protect_one_s"]
    exhaustive_s = singles_s + per_pair * len(pairs)

    at_w4 = next(p for p in data["points"] if abs(p["budget"] - w4_bits) < 1e-9)
    load_after = os.getloadavg()
    result = {
        "model": args.model,
        "measured_revision": revision,
        "languages": list(langs),
        "scheme": "w3g128",
        "protect": "w8g128",
        "granularity": "layer",
        "units": len(units),
        "objective": "worst (max over languages of relative Δbpb)",
        "selection_tokens": data["documents"]["selection_tokens"],
        "heldout_tokens": data["documents"]["heldout_tokens"],
        "max_tokens_per_language": {"selection": args.max_tokens, "heldout": args.heldout_max_tokens},
        "w3g128_bits_per_universe_weight": w3_bits,
        "w4g128_bits_per_universe_weight": w4_bits,
        "frontier_budgets": list(frontier),
        "at_w4g128_bits": {
            "units": at_w4["units"],
            "plan": at_w4["plan"],
            "bits_per_universe_weight": at_w4["bits_per_universe_weight"],
            "worst": at_w4["heldout"]["worst"],
            "versus_uniform": at_w4["versus_uniform"],
        },
        "table": [
            {
                k: r[k]
                for k in ("name", "kind", "plan", "bits_per_universe_weight", "bits_per_model_weight", "worst", "mean")
            }
            for r in data["table"]
        ],
        "points": [
            {
                k: p[k]
                for k in ("budget", "units", "found_by", "bits_per_universe_weight", "selection", "versus_uniform")
            }
            for p in data["points"]
        ],
        "seconds": {
            "search": search_s,
            "search_protect_one": singles_s,
            "search_refine": data["timing"]["refine_s"],
            "heldout_verdict": data["timing"]["heldout_s"],
            "run_search_total": round(t_search_total, 3),
            "pair_sample": round(t_pairs, 3),
            "per_pair_configuration": round(per_pair, 3),
            "exhaustive_singles_and_pairs_extrapolated": round(exhaustive_s, 3),
        },
        "exhaustive": {
            "singles": len(units),
            "pairs": len(pairs),
            "pairs_timed": len(sample),
            "note": "singles measured (the protect-one sweep); pairs: a sample timed with the same sweep on the same "
            "selection documents (replay from the all-w3g128 base), the per-configuration time multiplied by the "
            "number of pairs",
        },
        "exhaustive_over_search": exhaustive_s / search_s,
        "refine_configurations": data["timing"]["refine_configurations"],
        "load_average": {"before": load_before, "after": load_after},
        "markdown": search_markdown(data),
    }
    path = save(f"search-{args.model}", result)
    print(result["markdown"])
    print(f"wrote {path}; exhaustive/search = {result['exhaustive_over_search']:.2f}")


if __name__ == "__main__":
    main()
