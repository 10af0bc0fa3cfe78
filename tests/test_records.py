"""The records of results (their JSON mapping round-trips real outputs) and the single homes of the rules."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest

from quant_disparity.analysis.records import (
    AuditResult,
    DocumentColumns,
    LocateResult,
    StudyResult,
    Verdict,
    effect_matrix,
)
from quant_disparity.analysis.stats import (
    Estimate,
    interval,
    language_metrics,
    may_be_zero,
    spearman_undefined,
)

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "quant_disparity"


def _same_json(a, b) -> bool:
    """Equal as JSON text: same values, same key order."""
    return json.dumps(a, ensure_ascii=False) == json.dumps(b, ensure_ascii=False)


# -- round trips of real outputs -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", sorted((ROOT / "experiments" / "origin" / "results").glob("locate-*.json")), ids=lambda p: p.name
)
def test_locate_record_round_trips_a_stored_locate_json(path):
    data = json.loads(path.read_text())
    record = LocateResult.from_dict(data)
    assert _same_json(record.to_dict(), data)
    first = record.language_ids[0]
    assert record.results[first].units[record.results[first].ranking[0]].rank == 1


def test_effect_matrix_reads_the_effects_in_percent():
    def unit(v):
        return {"bpb": {"value": 1.0, "ci95": None}, "effect": {"value": v, "ci95": None}, "rank": 1}

    lang = {"bpb_fp": {"value": 1.0, "ci95": None}, "all_quantized": {}, "ranking": ["L0", "L1"], "pairs": {}}
    data = {
        "config": {},
        "model": {},
        "scheme": {},
        "corpus": {},
        "mode": "protect-one",
        "granularity": "layer",
        "effect": "",
        "units": [{"name": "L0"}, {"name": "L1"}],
        "languages": [{"id": "a"}, {"id": "b"}],
        "results": {
            "a": {**lang, "units": {"L0": unit(0.02), "L1": unit(None)}},
            "b": {**lang, "units": {"L0": unit(-0.01), "L1": unit(0.0)}},
        },
        "pairs": [],
        "environment": {},
        "timing": {},
        "created": "x",
    }
    units, langs, m = effect_matrix(data)
    assert units == ["L0", "L1"] and langs == ["a", "b"]
    assert m[0, 0] == pytest.approx(2.0) and m[0, 1] == pytest.approx(-1.0) and np.isnan(m[1, 0]) and m[1, 1] == 0.0


def test_study_and_verdict_records_round_trip_the_committed_replication_results():
    from quant_disparity.experiments.export import load_frozen_run
    from quant_disparity.experiments.results import analyse

    spec, store = load_frozen_run(ROOT / "experiments" / "origin" / "results", "origin-log_setup")
    data = json.loads(json.dumps(analyse(spec, store), ensure_ascii=False))  # as results.json holds it
    record = StudyResult.from_dict(data)
    assert _same_json(record.to_dict(), data)
    assert all(_same_json(Verdict.from_dict(v).to_dict(), v) for v in data["verdicts"])
    assert {t.name for t in record.trials} == {t.name for t in spec.trials}


def test_audit_record_round_trips_a_written_audit_json(saved_model, isolated_cache):
    from quant_disparity.audit import run_audit
    from quant_disparity.config import AuditConfig
    from quant_disparity.evaluate import EvalSettings

    cfg = AuditConfig(
        model=str(saved_model("llama")),
        scheme="w3g16",
        langs=("eng", "heb", "amh"),
        max_tokens=200,
        n_boot=50,
        split="all",
        eval=EvalSettings(window=128, context=16, batch_tokens=512),
    )
    text = json.dumps(run_audit(cfg).to_dict(), indent=1, ensure_ascii=False)  # as the CLI writes audit.json
    data = json.loads(text)
    record = AuditResult.from_dict(data)
    assert json.dumps(record.to_dict(), indent=1, ensure_ascii=False) == text
    row = record.languages[0]
    assert row.lang == data["languages"][0]["id"] and row.estimates["rel_delta_bpb"].value is not None


def test_store_rows_are_named_records():
    from quant_disparity.experiments.store import ROW_COLUMNS, ResultRow

    rows = [
        ResultRow("k", "eng", "d1", 0, 10, 9, 4, 3, 6.0, 5.0, 0.5, 2.0),
        ResultRow("k", "eng", "d2", 1, 20, 19, 6, 5, 7.0, 6.5, 0.25, 4.0),
    ]
    assert ROW_COLUMNS[:3] == ("trial_key", "lang", "doc_id") and rows[1].nll_ref == 6.5
    cols = DocumentColumns.from_rows(rows)
    assert cols.n_docs == 2 and cols.bytes.tolist() == [10.0, 20.0] and cols.top1.tolist() == [2.0, 4.0]
    assert DocumentColumns.of(cols.sums()).nll.tolist() == [6.0, 7.0]


# -- one home per rule, on hand-computed toys ----------------------------------------------------------------------
def test_interval_is_the_percentile_interval_of_the_finite_replicates():
    reps = np.arange(1.0, 102.0)  # 1..101: the 2.5th and 97.5th percentiles interpolate to 3.5 and 98.5
    assert interval(50.0, reps) == Estimate(50.0, 3.5, 98.5)
    assert interval(50.0, np.concatenate([reps, [np.nan, np.inf]])) == Estimate(50.0, 3.5, 98.5)
    assert interval(50.0, reps, "too few") == Estimate(50.0, note="too few")  # the value alone, saying why
    assert interval(50.0, np.array([np.nan])) == Estimate(50.0)
    assert interval(math.inf, reps) == Estimate(None, note="not finite")


def test_claim_values_use_the_same_interval():
    from quant_disparity.experiments.claims import Value

    assert Value(50.0, np.arange(1.0, 102.0)).ci() == [3.5, 98.5]
    assert Value(50.0, None).ci() is None and Value(None, np.ones(3)).ci() is None
    assert Value(2.0, None, "why").to_dict() == {"value": 2.0, "ci95": None, "note": "why"}


def test_a_ratio_is_undefined_when_its_denominators_interval_includes_zero():
    assert not may_be_zero(Estimate(1.0, 0.5, 1.5)) and not may_be_zero(Estimate(-1.0, -2.0, -0.5))
    assert may_be_zero(Estimate(1.0, -0.1, 2.0)) and may_be_zero(Estimate(1.0, 0.0, 2.0))  # zero at the edge too
    assert may_be_zero(Estimate(1.0)) and may_be_zero(Estimate(None))  # no interval: it may be zero


def test_the_ratio_rule_decides_the_disparity_in_claims_too(saved_model):
    from test_experiments import spec_text

    from quant_disparity.experiments.claims import Call, Evaluator
    from quant_disparity.experiments.spec import parse_spec

    spec = parse_spec(spec_text(saved_model("llama"), claims=False), "s.toml")
    rng = np.random.default_rng(0)
    rows = {}
    for t in spec.trials:  # high-resource languages (eng, deu) damaged by +/-5 % alternately: a mean near zero
        rows[t.name] = {}
        for lang, damage in (("eng_Latn", None), ("heb_Hebr", 0.3), ("amh_Ethi", 0.3), ("deu_Latn", None)):
            nbytes = rng.integers(300, 900, 20).astype(float)
            ref = nbytes * 1.5
            factor = 1 + (0.05 * np.resize([1.0, -1.0], 20) if damage is None else damage)
            rows[t.name][lang] = {
                "bytes": nbytes,
                "n_pred": nbytes / 3,
                "nll": ref * factor,
                "nll_ref": ref,
                "kl": nbytes / 30,
                "top1": nbytes / 4,
            }
    ev = Evaluator(spec, rows)
    trial = spec.trials[0]
    high = ev.group_mean(trial, ev.groups()[1], "rel_delta_bpb")
    assert may_be_zero(high.estimate())
    assert (
        ev.call(Call("disparity", ()), trial).to_dict()["note"]
        == "ratio undefined: the high-resource mean's 95% CI includes zero"
    )


def test_spearman_guards():
    assert spearman_undefined(np.array([1.0, 2.0])) == "needs at least 3 languages with the measure"
    assert spearman_undefined(np.array([2.0, 2.0, 2.0])) == "the measure is the same for every language"
    assert spearman_undefined(np.array([1.0, 2.0, 2.0])) is None


def test_language_metrics_on_hand_computed_sums():
    ln2 = math.log(2)
    m = language_metrics(
        {
            "nll": np.float64(30 * ln2),
            "nll_ref": np.float64(20 * ln2),
            "bytes": np.float64(10),
            "n_pred": np.float64(5),
            "kl": np.float64(5 * ln2),
            "top1": np.float64(4),
        }
    )
    want = {
        "bpb_fp": 2.0,
        "bpb_q": 3.0,
        "delta_bpb": 1.0,
        "rel_delta_bpb": 0.5,
        "ppl_fp": 16.0,
        "ppl_q": 64.0,
        "ppl_ratio": 4.0,
        "log_degradation_pct": 300.0,
        "kl_bits": 1.0,
        "top1_agreement": 0.8,
    }
    assert list(m) == list(want)
    for k, v in want.items():
        assert float(m[k]) == pytest.approx(v), k


# -- layering ------------------------------------------------------------------------------------------------------
def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
            found.update("." * node.level + a.name for a in node.names if node.module is None)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


@pytest.mark.parametrize("path", sorted((SRC / "report").glob("*.py")), ids=lambda p: p.name)
def test_reports_depend_on_results_and_analysis_not_on_the_commands(path):
    commands = (
        "..locate",
        "..audit",
        "..experiments",
        "..cli",
        "quant_disparity.locate",
        "quant_disparity.audit",
        "quant_disparity.experiments",
        "quant_disparity.cli",
    )
    bad = [m for m in _imports(path) if m.startswith(commands)]
    assert not bad, f"{path.name} imports {bad}"


def test_no_private_statistics_helper_is_imported_across_modules():
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.level
                and (node.module or "").startswith(("analysis", "stats"))
            ):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.relative_to(SRC)} imports {private}"
