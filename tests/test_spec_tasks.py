"""Tasks in specs: [tasks] runs on every trial, per-item results in the store (resumable, keys unchanged), the same
numbers as ``audit --tasks``, task metrics in claims and reports; bad task specs and claims are one line."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from test_experiments import _synthetic_rows, spec_text

from quant_disparity.analysis.stats import resample_counts
from quant_disparity.errors import UserError
from quant_disparity.experiments import run_experiment
from quant_disparity.experiments.claims import Evaluator, evaluate_claims
from quant_disparity.experiments.spec import parse_spec
from quant_disparity.tasks import LanguageItems, Metric

pytestmark = pytest.mark.usefixtures("isolated_cache")

LANGS = ["eng_Latn", "heb_Hebr"]


@pytest.fixture
def model_dir(saved_model):
    return saved_model("llama")


def tasks_spec(model: Path, *, tasks='names = ["cloze"]', claims: str = "") -> str:
    return f"""
name = "tasks-study"
n_boot = 200

[corpus]
name = "udhr"
split = "heldout"
langs = ["eng", "heb"]
max_tokens = 96

[eval]
window = 64
context = 8
batch_tokens = 192

[grid]
models = ["{model}"]
schemes = ["w3g16"]
[grid.plans]
none = "{{scheme}}:*"
ends = "keep:layer:0,layer:-1; {{scheme}}:*"

[tasks]
{tasks}
{claims}
"""


def _task_rows(store: Path) -> list[tuple]:
    db = sqlite3.connect(store)
    try:
        return db.execute("SELECT * FROM task_items ORDER BY task_key, lang, item, metric, arm").fetchall()
    finally:
        db.close()


def test_spec_tasks_match_audit_resume_and_leave_trial_keys_alone(model_dir, tmp_path, capsys):
    claims = """
[[claims]]
id = "T1"
expr = "task_delta(task='cloze', lang='heb', plan='none') <= task_delta(task='cloze', lang='heb', plan='ends')"
"""
    spec_file = tmp_path / "s.toml"
    spec_file.write_text(tasks_spec(model_dir, claims=claims))
    r1 = run_experiment(spec_file, tmp_path / "run")
    assert r1["run"]["tasks"] == {"task_runs": 2, "already_stored": 0, "computed": 2}
    store = tmp_path / "run" / "store.sqlite"
    rows = _task_rows(store)
    assert rows

    # the same numbers as the audit's own task run on the same model, plan, languages and seed
    for plan_name, plan in (("ends", "keep:layer:0,layer:-1; w3g16:*"),):
        out = tmp_path / f"audit-{plan_name}"
        argv = ["audit", "--model", str(model_dir), "--plan", plan, "--langs", "eng,heb", "--split", "heldout"]
        argv += ["--max-tokens", "96", "--window", "64", "--context", "8", "--tasks", "cloze", "--out", str(out)]
        code, _, err = run_cli(argv, capsys)
        assert code == 0, err
        audit = json.loads((out / "audit.json").read_text())["tasks"]["results"][0]["languages"]
        study = next(t for t in r1["tasks"] if t["trial"] == f"{model_dir}|w3g16|{plan_name}")
        for a, s in zip(audit, study["languages"]):
            assert a["lang"] == s["lang"] and a["n_items"] == s["n_items"]
            for arm in ("fp", "q", "delta"):
                assert s["accuracy"][arm]["value"] == a["accuracy"][arm]["value"]

    # the claim reads the stored items: its point values by hand
    v = next(x for x in r1["verdicts"] if x["id"] == "T1")
    db = sqlite3.connect(store)
    trial_key = dict(db.execute("SELECT trial_name, trial_key FROM spec_trials"))[f"{model_dir}|w3g16|none"]
    (tk,) = db.execute("SELECT task_key FROM task_runs WHERE trial_key = ?", (trial_key,)).fetchone()
    q = [n for (n,) in db.execute("SELECT num FROM task_items WHERE task_key=? AND lang='heb_Hebr' AND arm='q'", (tk,))]
    fp = [
        n for (n,) in db.execute("SELECT num FROM task_items WHERE task_key=? AND lang='heb_Hebr' AND arm='fp'", (tk,))
    ]
    db.close()
    assert v["left"]["value"] == pytest.approx(np.mean(q) - np.mean(fp), abs=1e-12)

    # resume: nothing recomputed, nothing changed; the trials' keys are those of the same spec without [tasks]
    r2 = run_experiment(spec_file, tmp_path / "run")
    assert r2["run"]["tasks"] == {"task_runs": 2, "already_stored": 2, "computed": 0}
    assert _task_rows(store) == rows and r2["tasks"] == r1["tasks"] and r2["verdicts"] == r1["verdicts"]
    plain = tmp_path / "plain.toml"
    plain.write_text(tasks_spec(model_dir).replace('[tasks]\nnames = ["cloze"]', ""))
    r3 = run_experiment(plain, tmp_path / "run")  # the same store: its trials are found, none is computed
    assert r3["run"]["computed"] == 0 and r3["run"]["already_stored"] == 2
    assert "tasks" not in r3 and "tasks" not in r3["run"]
    assert {t["name"]: t["key"] for t in r3["trials"]} == {t["name"]: t["key"] for t in r1["trials"]}

    # a second task computes only itself; the report shows both
    spec_file.write_text(tasks_spec(model_dir, tasks='names = ["cloze", "generate"]\ngen_tokens = 4', claims=claims))
    r4 = run_experiment(spec_file, tmp_path / "run")
    assert r4["run"]["tasks"] == {"task_runs": 4, "already_stored": 2, "computed": 2}
    assert {t["task"] for t in r4["tasks"]} == {"cloze", "generate"}
    summary = sorted((tmp_path / "run").glob("*/summary.md"))[-1].read_text()
    assert "## Tasks" in summary and "cloze: Δaccuracy" in summary and "generate: chrf" in summary
    for fmt, want in (("html", "<h2>Task: cloze: Δaccuracy"), ("latex", r"tasks-study: cloze: $\Delta$accuracy")):
        target = tmp_path / f"report.{fmt}"
        code, _, err = run_cli(["report", str(tmp_path / "run"), "--format", fmt, "--out", str(target)], capsys)
        assert code == 0, err
        assert want in target.read_text()


def _items(lang: str, fp: list[float], q: list[float]) -> LanguageItems:
    ids = [f"a{i}" for i in range(len(fp))]
    return LanguageItems(lang, ids, {"accuracy": Metric({"fp": np.array(fp), "q": np.array(q)})})


def test_task_claims_by_hand_paired_and_short(model_dir):
    claims = """
[[claims]]
id = "P"
expr = "task_q(task='cloze', lang='heb', plan='ends') > task_q(task='cloze', lang='heb', plan='none')"

[[claims]]
id = "M"
expr = "mean_task_delta(task='cloze', plan='none') < 0"
"""
    text = spec_text(model_dir, claims=False) + '\n[tasks]\nnames = ["cloze"]\n' + claims
    spec = parse_spec(text, "s.toml")
    rows = _synthetic_rows(spec, {"none": 0.2, "ends": 0.05, "keep1": 0.19})
    rng = np.random.default_rng(0)
    n = 20
    fp = {lang: (rng.random(n) < 0.7).astype(float) for lang in ("eng_Latn", "heb_Hebr", "amh_Ethi", "deu_Latn")}
    none = {lang: np.where(rng.random(n) < 0.4, 0.0, v) for lang, v in fp.items()}  # the quantized model forgets
    items = {
        t.name: {
            "cloze": [_items(lang, list(fp[lang]), list((none if t.plan_name == "none" else fp)[lang])) for lang in fp]
        }
        for t in spec.trials
    }
    ev = Evaluator(spec, rows, items)
    out = evaluate_claims(spec, ev)
    p = [x for x in out if x["id"] == "P"]
    assert len(p) == 2  # one per scheme
    for x in p:
        assert x["left"]["value"] == pytest.approx(fp["heb_Hebr"].mean())
        assert x["right"]["value"] == pytest.approx(none["heb_Hebr"].mean())
    m = [x for x in out if x["id"] == "M"]
    want = np.mean([none[lang].mean() - fp[lang].mean() for lang in fp])
    assert all(x["left"]["value"] == pytest.approx(want) for x in m)
    assert all(x["verdict"] == "supported" for x in m)  # 40 % of correct answers lost: far from zero

    # paired: both trials of a model resample the same items, so equal item values give a difference of exactly 0
    (t_none,) = [t for t in spec.trials if t.plan_name == "none" and t.scheme == "w3g16"]
    (t_ends,) = [t for t in spec.trials if t.plan_name == "ends" and t.scheme == "w3g16"]
    a = ev._task_value(t_ends, "cloze", "heb_Hebr", "accuracy", "fp")
    b = ev._task_value(t_none, "cloze", "heb_Hebr", "accuracy", "fp")
    assert a.reps is not None and b.reps is not None and np.array_equal(a.reps, b.reps)
    # and a replicate is the weighted item mean of a resample of the items (by hand, resample_counts' contract)
    w = resample_counts(n, spec.n_boot, np.random.default_rng(7))
    assert w.shape == (spec.n_boot, n) and np.all(w.sum(axis=1) == n)
    q = ev._task_value(t_none, "cloze", "heb_Hebr", "accuracy", "q")
    assert q.reps is not None and np.all((q.reps >= 0) & (q.reps <= 1)) and q.reps.std() > 0

    # a language with fewer items than an interval needs: a value, no interval, and the claim is inconclusive
    few = {t: {"cloze": [_items(it.lang, [1, 0, 1], [0, 0, 1]) for it in v["cloze"]]} for t, v in items.items()}
    out = evaluate_claims(spec, Evaluator(spec, rows, few))
    assert {x["verdict"] for x in out} == {"inconclusive"}
    assert all(x["left"]["value"] is not None for x in out)


@pytest.mark.parametrize(
    ("tasks", "claims", "message"),
    [
        ('names = ["clozz"]', "", r"s\.toml:\d+: \[tasks\]: unknown task 'clozz'.*did you mean 'cloze'"),
        ("names = []", "", r"s\.toml:\d+: \[tasks\] names is empty"),
        ('names = ["cloze"]\ngen_tokens = 0', "", r"s\.toml:\d+: \[tasks\]: --gen-tokens must be in 1\.\.1024"),
        ('names = ["cloze"]\nlangs = ["eng"]', "", r"s\.toml:\d+: unknown field 'langs' in \[tasks\]"),
        ('names = "cloze"', "", r"s\.toml:\d+: names must be a list of strings"),
        (
            'names = ["cloze"]',
            "expr = \"task_delta(task='generate', lang='heb', plan='none') < 0\"",
            r"s\.toml:\d+: claim X: .*names task 'generate', which the spec does not run",
        ),
        (
            'names = ["generate"]',
            "expr = \"task_delta(task='generate', metric='chrf', lang='heb', plan='none') < 0\"",
            r"s\.toml:\d+: claim X: generate's chrf compares the quantized model with the reference already",
        ),
        (
            'names = ["cloze"]',
            "expr = \"task_q(task='cloze', metric='accurcy', lang='heb', plan='none') < 1\"",
            r"s\.toml:\d+: claim X: task cloze has no metric 'accurcy'.*did you mean 'accuracy'",
        ),
        ('names = ["cloze"]', "expr = \"task_q(lang='heb', plan='none') < 1\"", r"claim X: task_q\(\) needs task="),
        ('names = ["cloze"]', "expr = \"task_q(task='cloze', plan='none') < 1\"", r"claim X: task_q\(\) needs lang="),
        (
            'names = ["cloze"]',
            "expr = \"task_spearman(task='cloze', lang='heb', plan='none') < 1\"",
            r"claim X: task_spearman\(\) has no argument 'lang'",
        ),
    ],
)
def test_bad_task_specs_and_claims_name_the_line(model_dir, tasks, claims, message):
    text = tasks_spec(model_dir, tasks=tasks, claims=f'[[claims]]\nid = "X"\n{claims}' if claims else "")
    with pytest.raises(UserError, match=message):
        parse_spec(text, "s.toml")


def test_run_with_a_bad_task_spec_exits_2_and_writes_nothing(model_dir, tmp_path, capsys):
    spec_file = tmp_path / "s.toml"
    spec_file.write_text(tasks_spec(model_dir, tasks='names = ["lmeval:no_such_task_xyz"]'))
    code, out, err = run_cli(["run", str(spec_file), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no_such_task_xyz" in err
    assert not (tmp_path / "run").exists()
