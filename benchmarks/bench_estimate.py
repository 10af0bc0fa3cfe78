"""Predicted vs measured time and peak memory of audit and locate, float32 and bfloat16, on the bundled models.

For each job: the dry-run's prediction (``quant_disparity.estimate``: this machine's calibration, cached), then
the same job run by the CLI in a fresh interpreter, which reports its own peak resident size (``VmHWM``) and the
job's timing (quantization + evaluation: the span the prediction covers; model loading excluded on both
sides). Ratios are predicted / measured. The machine's load is recorded with them: time predictions assume the
throughput measured at calibration, so a busier machine than at calibration runs slower than predicted.

    python benchmarks/bench_estimate.py [--models smollm2-135m,gemma-3-270m] [--max-tokens 256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import LANGS, save

from quant_disparity.estimate import MEASURE_CHILD as CHILD  # reports VmHWM, not ru_maxrss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,gemma-3-270m")
    ap.add_argument("--max-tokens", type=int, default=256)
    args, _ = ap.parse_known_args()
    from quant_disparity.config import AuditConfig
    from quant_disparity.estimate import audit_job, locate_job
    from quant_disparity.locate import LocateConfig

    rows = []
    for model in args.models.split(","):
        for command in ("audit", "locate"):
            for dtype in ("float32", "bfloat16"):
                common = {"model": model, "langs": LANGS, "max_tokens": args.max_tokens, "dtype": dtype}
                if command == "audit":
                    e = audit_job(AuditConfig(**common, n_boot=100))
                else:
                    e = locate_job(LocateConfig(**common, n_boot=100))
                with tempfile.TemporaryDirectory() as tmp:
                    argv = [command, "--model", model, "--langs", ",".join(LANGS), "--dtype", dtype]
                    argv += ["--max-tokens", str(args.max_tokens), "--n-boot", "100", "--out", tmp + "/o"]
                    load_before = os.getloadavg()[0]
                    out = subprocess.run(
                        [sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, check=True
                    )
                    peak = json.loads(out.stdout.strip().splitlines()[-1])["peak"]
                    result = json.loads((Path(tmp) / "o" / f"{command}.json").read_text())
                t = result["timing"]
                measured_s = t["quantize_s"] + t["evaluate_s"]
                row = {
                    "model": model,
                    "command": command,
                    "dtype": dtype,
                    "predicted_peak_bytes": e.memory["peak"],
                    "measured_peak_bytes": peak,
                    "peak_ratio": e.memory["peak"] / peak,
                    "predicted_s": e.time["total_s"],
                    "measured_s": measured_s,
                    "time_ratio": e.time["total_s"] / measured_s,
                    "configurations": e.work.configurations,
                    "predicted_tokens": e.work.predicted_tokens,
                    "load_average_before": load_before,
                    "load_average_after": os.getloadavg()[0],
                }
                rows.append(row)
                print(
                    f"{model} {command} {dtype}: peak {row['predicted_peak_bytes'] / 2**30:.2f} predicted / "
                    f"{peak / 2**30:.2f} GiB measured ({row['peak_ratio']:.2f}); time {row['predicted_s']:.1f} / "
                    f"{measured_s:.1f} s ({row['time_ratio']:.2f}); load {load_before:.1f}",
                    flush=True,
                )
                # saved after every job: a long run stopped part-way keeps what it measured
                path = save("estimate", {"langs": list(LANGS), "max_tokens": args.max_tokens, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
