"""Quantization wall time and peak memory per backend on the default model, as ratios to RTN (w4g128).

Each scheme quantizes the audit's default targets (every linear weight of the decoder blocks) in its own fresh
interpreter: the child loads the model, resets its peak resident size (``/proc/self/clear_refs``), then times
``QuantEngine.assign_`` of the whole assignment (each tensor checked and quantized by the scheme; the engine keeps
the originals, as an audit does) and reads the peak (``VmHWM``). Ratios: wall time over RTN's, and the memory the
quantization added to the loaded model (peak - resident size before it) over RTN's; the whole peak over RTN's is
recorded too. The children run one after the other in the same invocation, RTN first; the load average is
recorded before and after, and each child's CPU seconds beside its wall time (a ratio of CPU seconds moves less
with the machine's load than one of wall times).

A calibrated scheme (GPTQ, AWQ, a K-quant with an importance matrix) first collects its statistics on English
(the select split, the audit's default of 4096 tokens, all of what the split has on the default model); its time is
the statistics plus the quantization, and the statistics' share is recorded (``calibration_seconds``).

The list is generic: a scheme name that this build does not know (a backend of another branch) or whose library
(an optional extra) is not installed is reported as such instead of measured.

    python benchmarks/bench_backends.py [--model gemma-3-270m] [--schemes w4g128,hqq:w4g64,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import save

from quant_disparity.errors import UserError
from quant_disparity.quant import parse_scheme
from quant_disparity.quant.backends.base import MissingExtra

BASELINE = "w4g128"
SCHEMES = (
    BASELINE,
    "quanto:w8",
    "quanto:w4",
    "hqq:w4g64",
    "hqq:w4g64-noopt",
    "gguf:q4_k",
    "gguf:q4_k_m",
    "gguf:q4_k-imatrix",
    "gptq:w4g128",
    "awq:w4g128",
)

CHILD = r"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from common import peak_rss_bytes
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
from quant_disparity.audit import scheme_assignment
from quant_disparity.models import load_model
from quant_disparity.models.modules import build_module_map
from quant_disparity.quant import QuantEngine, cost, parse_scheme
scheme = parse_scheme(sys.argv[2])
lm = load_model(sys.argv[1], log=lambda m: None)
modmap = build_module_map(lm.model)
assignment = scheme_assignment(modmap, scheme, ())  # as `audit --scheme` makes it (bound per tensor)
engine = QuantEngine(lm.model, modmap, cache=False)
calibrated = any(s.needs_calibration for s in assignment.values())
if calibrated:
    import functools
    from quant_disparity.corpus.readers import load_corpus
    from quant_disparity.evaluate import tokenize
    from quant_disparity.quant.calibration import Calibration, bind_calibration, choose_documents, collect_statistics
    cal_set = choose_documents(Calibration("eng"), load_corpus("udhr"), functools.partial(tokenize, lm.tokenizer), [])
Path("/proc/self/clear_refs").write_text("5")  # reset the peak: the quantization's own from here
before = rss()
t, cpu = time.perf_counter(), time.process_time()
cal_seconds = 0.0
if calibrated:
    stats = collect_statistics(lm.model, list(assignment), cal_set, lm.prefix_token_id, max_length=lm.info.max_length)
    engine.add_calibration(stats)
    assignment = bind_calibration(assignment, stats.key)
    cal_seconds = time.perf_counter() - t
engine.assign_(assignment)
seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - cpu
peak = peak_rss_bytes()
c = cost(modmap, assignment)
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "calibration_seconds": cal_seconds,
                  "calibration_tokens": cal_set.n_tokens if calibrated else 0,
                  "rss_before": before, "peak_rss": peak, "tensors": len(assignment),
                  "quantized_params": c["quantized_params"], "bits_per_quantized_weight": c["bits_per_quantized_weight"]}))
"""


def measure(model: str, scheme: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, model, scheme, str(Path(__file__).resolve().parent)],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(f"{scheme} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def status(name: str) -> str | None:
    """None when the scheme can run here, else why not ("not installed: <command>", "unknown here")."""
    try:
        parse_scheme(name)
    except MissingExtra as e:
        return f"not installed ({e.hint})"
    except UserError as e:
        return f"not available in this build ({e.message})"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--schemes", default=",".join(SCHEMES), help=f"comma-separated; {BASELINE} is always run first")
    a = ap.parse_args()
    names = [BASELINE, *(s for s in a.schemes.split(",") if s and s != BASELINE)]
    load_before = os.getloadavg()
    runs: dict[str, dict] = {}

    def write():
        base = runs[BASELINE]
        for r in runs.values():
            if r["status"] == "measured":
                r["time_over_rtn"] = r["seconds"] / base["seconds"]
                r["cpu_time_over_rtn"] = r["cpu_seconds"] / base["cpu_seconds"]
                r["added_memory_over_rtn"] = r["added_bytes"] / base["added_bytes"]
                r["peak_over_rtn"] = r["peak_rss"] / base["peak_rss"]
        return save(
            "backends",
            {
                "model": a.model,
                "baseline": BASELINE,
                "schemes_asked": names,
                "complete": len(runs) == len(names),
                "runs": runs,
                "load_average": {"before": load_before, "after": os.getloadavg()},
            },
        )

    for name in names:
        why = status(name)
        if why:
            runs[name] = {"status": why}
            print(f"{name}: {why}", flush=True)
            path = write()
            continue
        m = measure(a.model, name)
        m["added_bytes"] = m["peak_rss"] - m["rss_before"]
        m["load_average_after"] = os.getloadavg()
        runs[name] = {"status": "measured", **m}
        print(
            f"{name}: {m['seconds']:.1f} s ({m['cpu_seconds']:.1f} CPU s), peak {m['peak_rss'] / 2**30:.2f} GiB "
            f"(+{m['added_bytes'] / 2**20:.0f} MiB over the loaded model), "
            f"{m['bits_per_quantized_weight']:.3f} bits/weight, load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        path = write()
    for name, r in runs.items():
        if r["status"] == "measured":
            print(
                f"{name}: time {r['time_over_rtn']:.2f}x RTN (CPU {r['cpu_time_over_rtn']:.2f}x), added memory {r['added_memory_over_rtn']:.2f}x, "
                f"peak {r['peak_over_rtn']:.2f}x"
            )
    print(f"wrote {path}; load average {load_before} -> {os.getloadavg()}")


if __name__ == "__main__":
    main()
