"""A run's results frozen into two small files that can be committed and read without the store.

``<dest>/<name>.rows.parquet`` holds every per-document row of the run's trials (the store's ``rows`` table,
in its order) and ``<dest>/<name>.trials.json.gz`` (gzip without a timestamp, so the same records give the same
bytes) the trials' records, the spec's trial names and the spec
itself. :class:`FrozenStore` reads them back with the reading interface of :class:`.store.Store`, so
:func:`.results.analyse` (claims, reports) gives from the export exactly what it gives from the store: the
same rows in the same order, hence the same bootstrap replicates.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path

from .._io import atomic_write_bytes
from ..errors import UserError
from .spec import ExperimentSpec, parse_spec
from .store import ROW_COLUMNS, ResultRow

EXPORT_VERSION = 1


def _paths(dest: Path, name: str) -> tuple[Path, Path]:
    return dest / f"{name}.rows.parquet", dest / f"{name}.trials.json.gz"


def export_run(
    spec: ExperimentSpec, spec_text: str, store, dest: str | Path, *, spec_path: str | None = None
) -> tuple[Path, Path]:
    """Write the rows and trial records of every trial of ``spec`` in ``store`` under ``dest``."""
    import io

    import pandas as pd

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    names = store.spec_trials(spec.name)
    missing = [t.name for t in spec.trials if t.name not in names or store.trial_status(names[t.name]) != "done"]
    if missing:
        raise UserError(
            f"{len(missing)} trials of {spec.name} are not finished (e.g. {missing[0]})",
            "finish the run before exporting it: quant-disparity run SPEC",
        )
    keys = sorted({names[t.name] for t in spec.trials})
    rows = store.rows(keys)
    df = pd.DataFrame(rows, columns=list(ROW_COLUMNS))
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, compression="zstd")
    rows_path, trials_path = _paths(dest, spec.name)
    atomic_write_bytes(rows_path, buf.getvalue())
    record = {
        "export_version": EXPORT_VERSION,
        "spec_name": spec.name,
        "spec_path": spec_path or spec.path,
        "spec_toml": spec_text,
        "spec_trials": {t.name: names[t.name] for t in spec.trials},
        "trials": {k: store.trial(k) for k in keys},
    }
    text = json.dumps(record, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    atomic_write_bytes(trials_path, gzip.compress(text.encode("utf-8"), mtime=0))
    return rows_path, trials_path


class FrozenStore:
    """The reading side of :class:`.store.Store` over an export (see the module docstring)."""

    def __init__(self, dest: str | Path, name: str):
        import pandas as pd

        rows_path, trials_path = _paths(Path(dest), name)
        if not rows_path.exists() or not trials_path.exists():
            raise UserError(
                f"no export of {name} in {dest} ({rows_path.name}, {trials_path.name})",
                "export the run first (experiments/origin/make_replication.py --from-stores)",
            )
        try:
            self.record = json.loads(gzip.decompress(trials_path.read_bytes()).decode("utf-8"))
        except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{trials_path} is not a readable export ({e})", "re-export the run") from None
        if self.record.get("export_version") != EXPORT_VERSION:
            raise UserError(
                f"{trials_path} has export version {self.record.get('export_version')!r}, "
                f"this version reads {EXPORT_VERSION}",
                "re-export the run",
            )
        df = pd.read_parquet(rows_path)
        if tuple(df.columns) != ROW_COLUMNS:
            raise UserError(f"{rows_path} does not hold result rows (columns {list(df.columns)})", "re-export the run")
        # back to the store's Python types (NumPy scalars would not compare or hash the same way)
        ints = {"doc", "bytes", "chars", "tokens", "n_pred"}
        cols = [
            [int(v) for v in df[c]]
            if c in ints
            else [float(v) for v in df[c]]
            if c in ("nll", "nll_ref", "kl", "top1")
            else list(df[c])
            for c in ROW_COLUMNS
        ]
        self._rows = [ResultRow._make(r) for r in zip(*cols)]
        self.name = name

    def spec(self) -> ExperimentSpec:
        return parse_spec(self.record["spec_toml"], self.record["spec_path"])

    def trial_status(self, key: str) -> str | None:
        t = self.record["trials"].get(key)
        return None if t is None else t["status"]

    def spec_trials(self, spec: str) -> dict[str, str]:
        return dict(self.record["spec_trials"]) if spec == self.record["spec_name"] else {}

    def trial(self, key: str) -> dict:
        return json.loads(json.dumps(self.record["trials"][key]))  # a copy: callers may modify it

    def rows(self, keys: Iterable[str] | None = None) -> list[ResultRow]:
        if keys is None:
            return list(self._rows)
        wanted = set(keys)
        return [r for r in self._rows if r.trial_key in wanted]

    def close(self) -> None:
        pass


def load_frozen_run(dest: str | Path, name: str) -> tuple[ExperimentSpec, FrozenStore]:
    store = FrozenStore(dest, name)
    return store.spec(), store
