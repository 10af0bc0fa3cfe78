"""Experiment specs, claims, the results store, resume after SIGKILL, the Ray executor and reports."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import chromium_images_loaded

from quant_disparity.errors import UserError
from quant_disparity.experiments import Store, load_run, run_experiment
from quant_disparity.experiments.claims import Evaluator, Value, evaluate_claims, verdict
from quant_disparity.experiments.spec import parse_spec
from quant_disparity.experiments.store import SCHEMA_VERSION


@pytest.fixture
def model_dir(saved_model):
    return saved_model("llama")


pytestmark = pytest.mark.usefixtures("isolated_cache")


def spec_text(model: Path, *, name="tiny-study", extra="", claims=True, max_tokens=160, window=64) -> str:
    text = f"""
name = "{name}"
description = "tiny"
n_boot = 200

[corpus]
name = "udhr"
split = "all"
langs = ["eng", "heb", "amh", "deu"]
max_tokens = {max_tokens}

[eval]
window = {window}
context = 8
batch_tokens = 192

[grid]
models = ["{model}"]
schemes = ["w3g16", "w4g16"]
[grid.plans]
none = "{{scheme}}:*"
ends = "keep:layer:0,layer:-1; {{scheme}}:*"
keep1 = "keep:layer:1; {{scheme}}:*"
{extra}
"""
    if claims:
        text += """
[[claims]]
id = "A"
text = "protecting the ends reduces the mean damage"
expr = "mean_rel_delta(plan='ends') < mean_rel_delta(plan='none')"

[[claims]]
id = "B"
expr = "delta_bpb(lang='heb', plan='none') > 2 * delta_bpb(lang='eng', plan='none')"
where = { scheme = "w3g16" }
"""
    return text


# -- specs ---------------------------------------------------------------------------------------------------------
def test_spec_expands_the_grid(model_dir):
    spec = parse_spec(spec_text(model_dir), "s.toml")
    assert len(spec.trials) == 6
    assert {t.plan for t in spec.trials if t.plan_name == "ends"} == {
        "keep:layer:0,layer:-1; w3g16:*",
        "keep:layer:0,layer:-1; w4g16:*",
    }
    assert [c.id for c in spec.claims] == ["A", "B"]


def test_claims_expand_only_over_model_scheme_pairs_the_spec_runs(model_dir, saved_model):
    """A scheme run on one model only gives no instance for the other model (not an error)."""
    from quant_disparity.experiments.claims import instances

    other = saved_model("gpt2")
    extra = "".join(
        f"""
[[trials]]
model = "{other}"
scheme = "w3g16"
plan_name = "{name}"
plan = "{plan}"
"""
        for name, plan in (("none", "w3g16:*"), ("ends", "keep:layer:0,layer:-1; w3g16:*"))
    )
    spec = parse_spec(spec_text(model_dir, extra=extra), "s.toml")
    a, b = spec.claims
    got = sorted((i["model"], i["scheme"]) for i, _ in instances(spec, a))
    assert got == sorted([(str(model_dir), "w3g16"), (str(model_dir), "w4g16"), (str(other), "w3g16")])
    assert sorted(i["model"] for i, _ in instances(spec, b)) == sorted([str(model_dir), str(other)])
    # a plan missing from a pair that does exist is still an error
    bad = spec_text(model_dir, extra=extra.replace('plan_name = "ends"', 'plan_name = "endz"'))
    with pytest.raises(UserError, match=r"claim A: .*matches no trial .*'scheme': 'w3g16'"):
        parse_spec(bad, "s.toml")


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda t: t.replace('description = "tiny"', 'description = "tiny'), r"s.toml: not valid TOML .*line 3"),
        (
            lambda t: t.replace("n_boot = 200", "n_boot = 200\nseeed = 1"),
            r"s.toml:5: unknown field 'seeed'.*did you mean 'seed'",
        ),
        (
            lambda t: t.replace("max_tokens = 160", "max_tokens = 160\nsplitt = 'all'"),
            r"s.toml:\d+: unknown field 'splitt' in \[corpus\]",
        ),
        (
            lambda t: t.replace('schemes = ["w3g16", "w4g16"]', 'schemes = ["w3g16", "w9g16"]'),
            r"s.toml:\d+: trial .*bits must be 2-8",
        ),
        (lambda t: t.replace("keep:layer:1;", "keep:lyer:1;"), r"s.toml:\d+: trial .*unknown selector 'lyer:1'"),
        (lambda t: t.replace("plan='ends') <", "plan='endz') <"), r"s.toml:\d+: claim A: .*matches no trial"),
        (lambda t: t.replace("mean_rel_delta(plan='ends')", "mean_rel_delta(plan='ends'"), r"claim A: cannot parse"),
        (
            lambda t: t.replace("mean_rel_delta(plan='ends')", "median(plan='ends')"),
            r"claim A: unknown function 'median'",
        ),
        (lambda t: t.replace("lang='heb'", "lang='fra'"), r"claim B: .*names a language the spec does not evaluate"),
        (lambda t: t.replace("lang='heb'", "lang='klingon'"), r"has no language 'klingon'"),
        (lambda t: t.replace('"amh", "deu"', '"amh", "xx"'), r"s.toml:\d+: corpus 'udhr' has no language 'xx'"),
        (lambda t: t.replace('name = "tiny-study"', 'name = "tiny study"'), r"name 'tiny study' must be"),
        (lambda t: "version = 2\n" + t, r"spec version 2 is not supported"),
        (
            lambda t: t.replace(
                "expr = \"mean_rel_delta(plan='ends') < mean_rel_delta(plan='none')\"",
                "expr = \"__import__('os').system < 1\"",
            ),
            r"claim A: .*is not allowed",
        ),
        (
            lambda t: t.replace(
                "expr = \"mean_rel_delta(plan='ends') < mean_rel_delta(plan='none')\"",
                "expr = \"__import__('os') < 1\"",
            ),
            r"claim A: unknown function '__import__'",
        ),
    ],
)
def test_malformed_specs_name_the_line(model_dir, mutate, message):
    with pytest.raises(UserError, match=message) as e:
        parse_spec(mutate(spec_text(model_dir)), "s.toml")
    assert "\n" not in str(e.value)


# -- claims on a synthetic store -----------------------------------------------------------------------------------
def _synthetic_rows(spec, effect: dict[str, float], seed=0):
    """Fake per-document rows: trial -> lang -> columns, with relative Δbpb ``effect[plan]`` (+/- small noise)."""
    rng = np.random.default_rng(seed)
    out = {}
    langs = ["eng_Latn", "heb_Hebr", "amh_Ethi", "deu_Latn"]
    for t in spec.trials:
        out[t.name] = {}
        for lang in langs:
            n = 20
            nbytes = rng.integers(300, 900, n).astype(float)
            ref = nbytes * 1.5 * (1 + 0.2 * rng.standard_normal(n))
            nll = ref * (1 + effect[t.plan_name] + 0.002 * rng.standard_normal(n))
            out[t.name][lang] = {
                "bytes": nbytes,
                "n_pred": nbytes / 3,
                "nll": nll,
                "nll_ref": ref,
                "kl": nbytes / 30,
                "top1": nbytes / 4,
            }
    return out


def test_claims_are_decided_from_intervals(model_dir):
    spec = parse_spec(spec_text(model_dir), "s.toml")
    rows = _synthetic_rows(spec, {"none": 0.20, "ends": 0.05, "keep1": 0.19})
    v = evaluate_claims(spec, Evaluator(spec, rows))
    a = [x for x in v if x["id"] == "A"]
    assert len(a) == 2 and {tuple(x["instance"].items()) for x in a} == {(("scheme", "w3g16"),), (("scheme", "w4g16"),)}
    assert all(x["verdict"] == "supported" for x in a)
    assert a[0]["left"]["value"] == pytest.approx(0.05, abs=0.01) and a[0]["right"]["value"] == pytest.approx(
        0.2, abs=0.01
    )
    # every language degrades alike, so Hebrew's Δbpb is not twice English's: refuted
    b = [x for x in v if x["id"] == "B"]
    assert len(b) == 1 and b[0]["verdict"] == "refuted"
    # same numbers on both sides: the interval of the difference contains zero
    rows = _synthetic_rows(spec, {"none": 0.20, "ends": 0.20, "keep1": 0.2})
    assert {x["verdict"] for x in evaluate_claims(spec, Evaluator(spec, rows)) if x["id"] == "A"} == {"inconclusive"}


def test_undefined_disparity_makes_a_claim_inconclusive(model_dir):
    text = (
        spec_text(model_dir, claims=False)
        + """
[[claims]]
id = "D"
expr = "disparity(plan='ends') < disparity(plan='none')"
"""
    )
    spec = parse_spec(text, "s.toml")
    rows = _synthetic_rows(spec, {"none": 0.0, "ends": 0.0, "keep1": 0.0})  # no damage: ratio undefined
    out = evaluate_claims(spec, Evaluator(spec, rows))
    assert {x["verdict"] for x in out} == {"inconclusive"}
    assert "undefined" in out[0]["left"]["note"]


def test_verdict_rule():
    assert verdict(Value(-1.0, np.array([-2.0, -1.5, -0.5])), "<") == "supported"
    assert verdict(Value(1.0, np.array([0.5, 1.0, 2.0])), "<") == "refuted"
    assert verdict(Value(0.1, np.array([-0.5, 0.1, 0.7])), ">") == "inconclusive"
    assert verdict(Value(None, None), ">") == "inconclusive"


# -- the store -----------------------------------------------------------------------------------------------------
def _meta(n_batches=2):
    return {
        "model": "m",
        "model_digest": "d",
        "scheme": "w4g16",
        "plan": "w4g16:*",
        "resolved": {},
        "corpus_digest": "c",
        "selection": {},
        "eval": {},
        "code_version": "x",
        "n_batches": n_batches,
    }


def test_store_commits_are_idempotent_and_finish_trials(tmp_path):
    s = Store(tmp_path / "s.sqlite")
    docs = [{"doc": 0, "lang": "eng_Latn", "doc_id": "a01", "bytes": 10, "chars": 10, "tokens": 3, "n_pred": 3}]
    s.register("k1", _meta(), docs, "spec", "t1", "now")
    s.register("k1", _meta(), docs, "spec2", "other-name", "now")  # same content from another spec: no new trial
    assert s.commit_batch(0, {"k1": [(0, 1.0, 0.9, 0.1, 2.0)]}, "now") == []
    assert s.commit_batch(0, {"k1": [(0, 5.0, 5.0, 5.0, 5.0)]}, "now") == []  # duplicate batch ignored
    assert s.commit_batch(1, {"k1": [(0, 2.0, 1.1, 0.2, 1.0)]}, "now") == ["k1"]
    rows = s.rows()
    assert len(rows) == 1 and rows[0][8:10] == (3.0, 2.0) and rows[0][10] == pytest.approx(0.3) and rows[0][11] == 3.0
    assert s.trial_status("k1") == "done" and s.spec_trials("spec2") == {"other-name": "k1"}
    df = s.dataframe("spec")
    assert list(df["trial"]) == ["t1"] and float(df["nll"][0]) == 3.0
    s.export(tmp_path / "rows.csv", "spec")
    assert (tmp_path / "rows.csv").read_text().startswith("trial,trial_key,lang")
    import pandas as pd

    s.export(tmp_path / "rows.parquet", "spec")
    back = pd.read_parquet(tmp_path / "rows.parquet")
    assert list(back["trial"]) == ["t1"] and float(back["nll"][0]) == 3.0
    with pytest.raises(UserError, match="use a .csv or .parquet"):
        s.export(tmp_path / "rows.xlsx")
    s.close()


def test_store_refuses_newer_schema_locked_readonly_and_corrupt_files(tmp_path, monkeypatch):
    p = tmp_path / "s.sqlite"
    Store(p).close()
    db = sqlite3.connect(p)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    before = p.read_bytes()
    with pytest.raises(UserError, match="newer than this quant-disparity"):
        Store(p)
    assert p.read_bytes() == before

    q = tmp_path / "q.sqlite"
    Store(q).close()
    holder = sqlite3.connect(q, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    s = Store(q, timeout=0.2)
    with pytest.raises(UserError, match="locked by another run"):
        s.register("k", _meta(), [], "spec", "t", "now")
    holder.execute("ROLLBACK")
    holder.close()
    s.close()

    r = tmp_path / "r.sqlite"
    Store(r).close()
    os.chmod(r, 0o444)
    real_access = os.access
    try:
        if real_access(r, os.W_OK):  # running as root: permissions do not bind, so let os.access say it
            monkeypatch.setattr(
                os, "access", lambda p, mode: False if Path(p) == r and mode == os.W_OK else real_access(p, mode)
            )
        before = r.read_bytes()
        with pytest.raises(UserError, match="read-only"):
            Store(r)
        assert r.read_bytes() == before
    finally:
        os.chmod(r, 0o644)
    ro = Store(r, readonly=True)
    with pytest.raises(UserError, match="opened read-only"):
        ro.register("k", _meta(), [], "spec", "t", "now")
    ro.close()

    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(UserError, match="not a usable SQLite database"):
        Store(bad)
    assert bad.read_bytes() == b"this is not a database" * 100


# -- running, resuming, executors, reports -------------------------------------------------------------------------
def _rows(store_path: Path) -> list[tuple]:
    s = Store(store_path, readonly=True)
    try:
        return sorted(s.rows())
    finally:
        s.close()


def test_run_resume_and_new_trials_on_change(model_dir, tmp_path):
    spec_file = tmp_path / "s.toml"
    spec_file.write_text(spec_text(model_dir))
    r1 = run_experiment(spec_file, tmp_path / "run")
    assert r1["run"]["computed"] == 6 and r1["run"]["already_stored"] == 0
    assert {v["verdict"] for v in r1["verdicts"]} <= {"supported", "refuted", "inconclusive"}
    rows = _rows(tmp_path / "run" / "store.sqlite")
    r2 = run_experiment(spec_file, tmp_path / "run")
    assert r2["run"]["computed"] == 0 and r2["run"]["already_stored"] == 6
    assert _rows(tmp_path / "run" / "store.sqlite") == rows
    assert r2["verdicts"] == r1["verdicts"] and r2["trials"] == r1["trials"]
    inv = sorted(p for p in (tmp_path / "run").iterdir() if p.is_dir())
    assert len(inv) == 2 and all(
        (p / f).exists() for p in inv for f in ("spec.toml", "run.log", "summary.md", "verdicts.json")
    )
    # a different evaluation setting is a different trial: all six are computed again, the old ones stay
    spec_file.write_text(spec_text(model_dir, window=96))
    r3 = run_experiment(spec_file, tmp_path / "run")
    assert r3["run"]["computed"] == 6
    assert len(_rows(tmp_path / "run" / "store.sqlite")) == 2 * len(rows)


def _committed_batches(store_path: Path) -> int | None:
    """Batch groups committed so far (0 before the store exists), read without writing anything; None when the
    store cannot be read at this moment (its schema not created yet, a WAL recovery under way)."""
    if not store_path.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=1.0)
        try:
            return db.execute("SELECT count(DISTINCT batch) FROM batches_done").fetchone()[0]
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return None


def test_sigkill_at_random_points_then_resume_gives_identical_rows(model_dir, tmp_path):
    # Kill points are chosen by observed progress, never by the clock, so the run is interrupted on a fast or a
    # slow machine alike: kill after the 1st committed batch group, then after k more (k seeded-random in 1..3),
    # three kills in all, at most 7 of the run's 15 groups (score_rows = 64 makes that many). Each kill lands in
    # the middle of the next group's computation (or of a later one's if the poll saw several commits at once).
    spec_file = tmp_path / "s.toml"
    text = spec_text(model_dir, claims=False, max_tokens=400).replace(
        "batch_tokens = 192", "batch_tokens = 192\nscore_rows = 64"
    )
    spec_file.write_text(text)
    reference = tmp_path / "ref"
    run_experiment(spec_file, reference)
    expected = _rows(reference / "store.sqlite")
    ref_db = sqlite3.connect(f"file:{reference / 'store.sqlite'}?mode=ro", uri=True)
    (n_groups,) = ref_db.execute("SELECT max(n_batches) FROM trials").fetchone()
    ref_db.close()
    assert n_groups >= 12  # room for three kills (at most 1 + 3 + 3 groups in) before the run could end
    out = tmp_path / "crashy"
    store = out / "store.sqlite"
    cmd = [sys.executable, "-m", "quant_disparity.cli", "run", str(spec_file), "--out", str(out)]
    rng = random.Random(1234)
    stall_limit = 600.0  # seconds without a new commit: only a real hang gets there (a whole run takes seconds)
    last = (-1, time.monotonic())  # (committed groups last seen, when they changed)

    def progress() -> int | None:
        nonlocal last
        n = _committed_batches(store)
        if n is not None and n != last[0]:
            last = (n, time.monotonic())
        elif time.monotonic() - last[1] > stall_limit:
            pytest.fail(f"no new batch group committed in {stall_limit:.0f} s (at {last[0]} of {n_groups}): a hang")
        return n

    kills, seen = [], []
    target = 1
    while len(kills) < 3:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
        try:
            while proc.poll() is None and (progress() or 0) < target:
                time.sleep(0.01)
        finally:
            killed = proc.poll() is None
            if killed:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert killed, f"run ended (rc {proc.returncode}) before {target} of {n_groups} batch groups were committed"
        while (done := progress()) is None:  # the store is readable again once nothing writes to it
            time.sleep(0.01)
        kills.append(target)
        seen.append(done)
        print(f"kill {len(kills)}: waited for {target} batch groups, {done} of {n_groups} committed")
        assert target <= done < n_groups  # interrupted mid-run, after the progress it was waiting for
        target = done + rng.randint(1, 3)
    assert len(kills) >= 2 and seen == sorted(seen)  # really interrupted, more than once, never lost a commit
    final = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)  # a hang guard only
    assert final.returncode == 0, final.stderr
    assert _rows(store) == expected


def test_sigterm_unwinds_cleanly_and_resume_gives_identical_rows(model_dir, tmp_path):
    # SIGTERM (a scheduler's stop) is sent once the first batch group is committed (observed progress, not the
    # clock): the command must unwind as from Ctrl-C, exit 143 with its one line, leave no lock, staging directory
    # or temporary file behind, keep what it committed, and a rerun must finish with the rows of an unbroken run.
    from quant_disparity._io import LOCK_NAME

    spec_file = tmp_path / "s.toml"
    spec_file.write_text(
        spec_text(model_dir, claims=False, max_tokens=400).replace(
            "batch_tokens = 192", "batch_tokens = 192\nscore_rows = 64"
        )
    )
    run_experiment(spec_file, tmp_path / "ref")
    expected = _rows(tmp_path / "ref" / "store.sqlite")
    out = tmp_path / "termed"
    store = out / "store.sqlite"
    cmd = [sys.executable, "-m", "quant_disparity.cli", "run", str(spec_file), "--out", str(out)]
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh, env=os.environ.copy())
        try:
            deadline = time.monotonic() + 600.0  # a hang guard only: the whole run takes seconds
            while proc.poll() is None and (_committed_batches(store) or 0) < 1:
                assert time.monotonic() < deadline, "no batch group committed: a hang"
                time.sleep(0.01)
            running = proc.poll() is None
            if running:
                proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert running, f"run ended (rc {proc.returncode}) before its first batch group was committed"
    text = stderr.read_text()
    assert rc == 143, text
    assert "the trials committed so far are kept in the store" in text.splitlines()[-1]
    assert "Traceback" not in text
    assert not (out / LOCK_NAME).exists()
    assert not [p for p in out.rglob("*") if p.name.startswith(".staging-") or p.name.endswith(".tmp")]
    assert (_committed_batches(store) or 0) >= 1  # what was committed before the signal is still there
    final = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)  # a hang guard only
    assert final.returncode == 0, final.stderr
    assert _rows(store) == expected


def test_ray_executor_matches_local(model_dir, tmp_path):
    ray = pytest.importorskip("ray")
    spec_file = tmp_path / "s.toml"
    spec_file.write_text(spec_text(model_dir, claims=False))
    run_experiment(spec_file, tmp_path / "local")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"QUANT_DISPARITY_CACHE": os.environ["QUANT_DISPARITY_CACHE"]}},
    )
    try:
        r = run_experiment(spec_file, tmp_path / "ray", executor="ray")
    finally:
        ray.shutdown()
    assert r["run"]["computed"] == 6
    assert _rows(tmp_path / "ray" / "store.sqlite") == _rows(tmp_path / "local" / "store.sqlite")


def test_reports_render_and_every_figure_loads_in_chromium(model_dir, tmp_path):
    from quant_disparity.cli import main

    spec_file = tmp_path / "s.toml"
    spec_file.write_text(spec_text(model_dir))
    run_experiment(spec_file, tmp_path / "run")
    for fmt_ in ("html", "md", "latex"):
        main(["report", str(tmp_path / "run"), "--format", fmt_])  # returns normally on success
    tex = (tmp_path / "run" / "report.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and "heb\\_Hebr" in tex
    html = (tmp_path / "run" / "report.html").read_text()
    n_img = html.count("<img ")
    assert n_img >= 4 and "http://" not in html and "https://" not in html  # self-contained
    chromium_images_loaded(html, tmp_path)


def test_report_bad_targets(tmp_path, capsys):
    from quant_disparity.cli import main

    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path)])
    assert e.value.code == 2 and "is not a run directory" in capsys.readouterr().err
    with pytest.raises(UserError, match="not found"):
        load_run(tmp_path / "nothing")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("All human beings are born free. They are endowed", "All human beings are born free."),
        ("人人生而自由,在尊严和权利上一律平等。他们赋有理性", "人人生而自由,在尊严和权利上一律平等。"),
        ("Version 2.5 is out. Next", "Version 2.5 is out."),
        ("no final mark\nsecond line", "no final mark"),
        ("يولد جميع الناس أحرارًا؟ نعم", "يولد جميع الناس أحرارًا؟"),
    ],
)
def test_first_sentence(text, expected):
    from quant_disparity.corpus.selection import first_sentence

    assert first_sentence(text) == expected


def test_a_document_minimum_takes_more_documents_and_keeps_keys_where_it_does_not_bind(model_dir):
    from collections import Counter

    from quant_disparity.experiments.planning import plan_model

    def planned(min_docs):
        text = spec_text(model_dir, claims=False).replace(
            "max_tokens = 160", f"max_tokens = 160\nmin_docs = {min_docs}"
        )
        spec = parse_spec(text, "s.toml")
        return plan_model(spec, str(model_dir), list(spec.trials), None)

    base = planned(1)
    counts = Counter(m["lang"] for m in base.docs_meta)
    low = min(counts.values())
    assert 1 <= low < 10
    same = planned(low)  # binds nowhere: the same documents, so the same trials
    assert [t["key"] for t in same.trials.values()] == [t["key"] for t in base.trials.values()]
    assert same.docs_meta == base.docs_meta
    more = planned(low + 3)
    assert Counter(m["lang"] for m in more.docs_meta) == {lang: max(n, low + 3) for lang, n in counts.items()}
    assert not {t["key"] for t in more.trials.values()} & {t["key"] for t in base.trials.values()}
    assert all(t["meta"]["selection"]["min_docs"] == low + 3 for t in more.trials.values())
    assert all("min_docs" not in t["meta"]["selection"] for t in base.trials.values())
    with pytest.raises(UserError, match=r"s.toml:\d+: min_docs must be >= 1"):
        parse_spec(spec_text(model_dir).replace("max_tokens = 160", "max_tokens = 160\nmin_docs = 0"), "s.toml")


def test_a_claim_error_points_at_that_claims_expr(model_dir):
    text = spec_text(model_dir).replace("lang='heb'", "lang='fra'")  # only claim B names a language
    lines = text.splitlines()
    b_expr = next(i for i, line in enumerate(lines) if line.startswith("expr") and "delta_bpb(lang=" in line) + 1
    a_expr = next(i for i, line in enumerate(lines) if line.startswith("expr")) + 1
    assert a_expr < b_expr
    with pytest.raises(UserError, match=rf"^s\.toml:{b_expr}: claim B: .*names a language the spec does not evaluate"):
        parse_spec(text, "s.toml")
