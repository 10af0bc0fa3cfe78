"""A run exported to Parquet + JSON analyses exactly as the store it came from."""

from __future__ import annotations

import gzip
import json

import pytest
from test_experiments import spec_text

from quant_disparity.errors import UserError
from quant_disparity.experiments import load_run, run_experiment
from quant_disparity.experiments.export import FrozenStore, export_run, load_frozen_run
from quant_disparity.experiments.results import analyse

pytestmark = pytest.mark.usefixtures("isolated_cache")


def test_export_round_trip_gives_the_same_analysis(saved_model, tmp_path):
    spec_file = tmp_path / "s.toml"
    text = spec_text(saved_model("llama"))
    spec_file.write_text(text)
    run_experiment(spec_file, tmp_path / "run")
    spec, store = load_run(tmp_path / "run")
    try:
        want = analyse(spec, store)
        rows_path, trials_path = export_run(spec, text, store, tmp_path / "export", spec_path=spec.path)
        rows = store.rows()
    finally:
        store.close()
    assert rows_path.stat().st_size < 200_000
    again = export_run(spec, text, FrozenStore(tmp_path / "export", spec.name), tmp_path / "again", spec_path=spec.path)
    assert [p.read_bytes() for p in again] == [rows_path.read_bytes(), trials_path.read_bytes()]  # deterministic
    fspec, frozen = load_frozen_run(tmp_path / "export", spec.name)
    assert frozen.rows() == rows  # every value bit for bit, in the store's order
    got = analyse(fspec, frozen)
    assert json.dumps(got, sort_keys=True, default=str) == json.dumps(want, sort_keys=True, default=str)


def test_missing_or_foreign_export_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no export"):
        FrozenStore(tmp_path, "nothing")
    (tmp_path / "x.rows.parquet").write_bytes(b"")
    (tmp_path / "x.trials.json.gz").write_bytes(gzip.compress(json.dumps({"export_version": 99}).encode()))
    with pytest.raises(UserError, match="export version"):
        FrozenStore(tmp_path, "x")
    (tmp_path / "x.trials.json.gz").write_bytes(b"not gzip")
    with pytest.raises(UserError, match="not a readable export"):
        FrozenStore(tmp_path, "x")
