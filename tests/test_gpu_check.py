"""benchmarks/gpu_check.py without a GPU: one clear line and exit status 2, before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_without_a_gpu_exits_2_with_one_line(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "QUANT_DISPARITY_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0]
    assert not (tmp_path / "r.json").exists()


def test_peak_table_prefers_the_longest_name():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from gpu_check import peak_of
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert peak_of("NVIDIA H200", None) == 989.0
    assert peak_of("NVIDIA L40S", None) == 362.0 and peak_of("NVIDIA L4", None) == 121.0
    assert peak_of("NVIDIA A100-SXM4-80GB", None) == 312.0
    assert peak_of("Some New GPU", None) is None and peak_of("Some New GPU", 500.0) == 500.0
