"""Quantization cost of the calibrated kinds (GPTQ, AWQ) as ratios to RTN, on one decoder layer of the default
model's shapes (gemma-3-270m: q [1024, 640], k and v [256, 640], o [640, 1024], gate and up [2048, 640],
down [640, 2048]) with random weights and random calibration statistics of 606 rows (the size of English's select
split under Gemma's tokenizer). Same inputs, same process, interleaved repeats (:func:`common.interleaved`);
each backend's peak resident memory is measured in a child process of its own (VmHWM after building the inputs,
then after quantizing the layer), as a ratio to RTN's increase. The machine's load average is recorded with it.

    python benchmarks/bench_calibrated.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SHAPES = {"q": (1024, 640), "k": (256, 640), "v": (256, 640), "o": (640, 1024), "gate": (2048, 640),
          "up": (2048, 640), "down": (640, 2048)}  # fmt: skip
SCHEMES = ("w4g128", "gptq:w4g128", "gptq:w4g128-actorder", "awq:w4g128", "awq:w4g128-clip")
ROWS = 606


def inputs():
    import torch

    from quant_disparity.quant.calibration import SiteStats

    gen = torch.Generator().manual_seed(0)
    sites = {}
    for d in {s[1] for s in SHAPES.values()}:
        x = torch.randn(ROWS, d, generator=gen) * torch.rand(d, generator=gen) * 3
        xd = x.double()
        sites[d] = SiteStats(xtx=xd.T @ xd, abs_sum=xd.abs().sum(0), rows=x, n=ROWS)
    weights = {k: torch.randn(*s, generator=gen) * 0.02 for k, s in SHAPES.items()}
    return weights, sites


def quantize_layer(scheme_name: str, weights, sites) -> None:
    from quant_disparity.quant import parse_scheme

    scheme = parse_scheme(scheme_name)
    for w in weights.values():
        scheme.fake_quantize(w, sites[w.shape[1]] if scheme.needs_calibration else None)


def child(scheme_name: str) -> None:
    from common import peak_rss_bytes

    weights, sites = inputs()
    before = peak_rss_bytes()
    quantize_layer(scheme_name, weights, sites)
    print(json.dumps({"peak_increase": peak_rss_bytes() - before}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    from common import interleaved, machine, median, save

    load = os.getloadavg()
    weights, sites = inputs()
    times = interleaved({s: (lambda s=s: quantize_layer(s, weights, sites)) for s in SCHEMES}, args.repeats)
    mem = {}
    for s in SCHEMES:
        out = subprocess.run([sys.executable, __file__, "--child", s], capture_output=True, text=True, check=True)
        mem[s] = json.loads(out.stdout.strip().splitlines()[-1])["peak_increase"]
    rtn_t, rtn_m = median(times["w4g128"]), max(mem["w4g128"], 1)
    rows = {
        s: {
            "seconds": round(median(times[s]), 4),
            "time_over_rtn": round(median(times[s]) / rtn_t, 1),
            "peak_increase_bytes": mem[s],
            "peak_over_rtn": round(mem[s] / rtn_m, 2),
        }
        for s in SCHEMES
    }
    data = {"layer_shapes": SHAPES, "calibration_rows": ROWS, "repeats": args.repeats, "schemes": rows,
            "load_average_before": load, "load_average_after": os.getloadavg(), "machine": machine()}  # fmt: skip
    path = save("calibrated", data)
    print(f"one gemma-3-270m layer, {ROWS} calibration rows; load average {load[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    for s, r in rows.items():
        print(f"{s:24s} {r['seconds']:8.3f} s  x{r['time_over_rtn']:<7} peak +{r['peak_increase_bytes'] / 2**20:.0f} MiB "
              f"(x{r['peak_over_rtn']})")  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
