"""REPLICATION.md is rebuilt from the committed export alone, byte for byte (no store, no model, no date)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_replication_md_rebuilds_byte_identically_from_the_committed_export(tmp_path):
    out = tmp_path / "REPLICATION.md"
    r = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "origin" / "make_replication.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=1800,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.read_bytes() == (ROOT / "REPLICATION.md").read_bytes()
