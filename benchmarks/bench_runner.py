"""Per-trial overhead of the experiment runner and its store vs calling the library directly (aim: under 5 %).

The same trials (a small grid of plans on one bundled model) are computed twice, interleaved with a warm-up:
directly (load the model, select and batch the documents, ``evaluate.sweep``) and through
``quant_disparity.experiments.run_experiment`` into a fresh store (the same, plus trial keys, plan resolution
records, per-batch commits, final rows, claim verdicts and the summary files).

    python benchmarks/bench_runner.py [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import save

from quant_disparity.evaluate import Forward
from quant_disparity.evaluate.sweep import sweep
from quant_disparity.experiments import run_experiment
from quant_disparity.experiments.batches import pick_bases
from quant_disparity.experiments.planning import plan_model
from quant_disparity.experiments.spec import parse_spec
from quant_disparity.models.modules import build_module_map
from quant_disparity.quant import QuantEngine

SPEC = """
name = "runner-bench"
n_boot = 1000
[corpus]
name = "udhr"
split = "heldout"
langs = ["eng", "deu", "heb", "arb", "cmn_Hans", "amh"]
max_tokens = 256
[eval]
batch_tokens = 2048
[grid]
models = ["{model}"]
schemes = ["w4g128", "w4-channel"]
[grid.plans]
all = "{{scheme}}:*"
ends = "keep:layer:0,layer:-1; {{scheme}}:*"
even = "keep:layers:even; {{scheme}}:*"
mlp = "keep:component:mlp; {{scheme}}:*"
[[claims]]
id = "ends"
expr = "disparity(plan='ends') < disparity(plan='all')"
"""


def direct(spec) -> float:
    t = time.perf_counter()
    mp = plan_model(spec, spec.trials[0].model, list(spec.trials), None)
    configs = {name: info["assignment"] for name, info in mp.trials.items()}
    engine = QuantEngine(mp.lm.model, build_module_map(mp.lm.model))
    sweep(Forward(mp.lm.model), mp.prepared, engine, configs, bases=pick_bases(configs))
    return time.perf_counter() - t


def via_runner(text: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.toml"
        path.write_text(text)
        t = time.perf_counter()
        run_experiment(path, Path(tmp) / "run")
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    text = SPEC.format(model=args.model)
    spec = parse_spec(text)
    direct(spec)  # warm-up: caches, page cache, lazy imports
    times = {"direct": [], "runner": []}
    for _ in range(args.repeats):
        times["direct"].append(direct(spec))
        times["runner"].append(via_runner(text))
    d, r = min(times["direct"]), min(times["runner"])
    n = len(spec.trials)
    result = {
        "model": args.model,
        "trials": n,
        "seconds": times,
        "best": {"direct": d, "runner": r},
        "per_trial_seconds": {"direct": d / n, "runner": r / n},
        "overhead": r / d - 1,
    }
    path = save("runner", result)
    print(
        f"{n} trials on {args.model}: direct {d:.1f} s, runner {r:.1f} s -> overhead {100 * result['overhead']:+.1f}% "
        f"(aim < 5%)"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
