"""GPTQ and AWQ (quant/backends/gptq.py, awq.py) and calibration (quant/calibration.py): against llm-compressor's
GPTQ core (golden file), float64 toy checks, calibration statistics recomputed independently, no overlap between
calibration and evaluated documents, and the audit end to end with its bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from quant_disparity.corpus import load_udhr
from quant_disparity.corpus.documents import Document, split_of
from quant_disparity.errors import UserError
from quant_disparity.quant import parse_scheme, rtn
from quant_disparity.quant.backends.awq import awq
from quant_disparity.quant.backends.gptq import gptq, grid, group_params
from quant_disparity.quant.calibration import (
    Calibration,
    CalibrationSet,
    SiteStats,
    check_no_overlap,
    choose_documents,
    collect_statistics,
)

GOLDEN = Path(__file__).parent / "golden" / "gptq_llmcompressor.npz"


def _objective(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    d = (w - q).double()
    return float(torch.trace(d @ h.double() @ d.T))


def _stats_of(x: torch.Tensor) -> SiteStats:
    x = x.double()
    return SiteStats(xtx=x.T @ x, abs_sum=x.abs().sum(0), rows=x.float(), n=x.shape[0])


# -- GPTQ against llm-compressor ----------------------------------------------------------------


def test_gptq_matches_llmcompressor_quantize_weight():
    """scripts/golden_gptq.py ran llm-compressor 0.14's quantize_weight (float64) with these grids."""
    data = np.load(GOLDEN)
    names = sorted({k.split("/")[0] for k in data.files})
    assert len(names) == 5
    for name in names:
        bits, group, sym, actorder, damp = data[f"{name}/meta"]
        bits, group = int(bits), int(group) or None
        # the library's symmetric codes run to -2^(b-1) (ours stop at -(2^(b-1)-1)); asymmetric grids are ours
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if sym else (0, 2**bits - 1)
        w = torch.from_numpy(data[f"{name}/w"])
        q = gptq(
            w,
            torch.from_numpy(data[f"{name}/h"]),
            torch.from_numpy(data[f"{name}/scale"]),
            torch.from_numpy(data[f"{name}/zero"]),
            lo,
            hi,
            group_size=group,
            act_order=bool(actorder),
            damp=float(damp),
        )
        theirs = torch.from_numpy(data[f"{name}/q"])
        assert not torch.equal(theirs, w)
        torch.testing.assert_close(q, theirs, atol=1e-9, rtol=0, msg=name)


def test_gptq_grids_are_ours():
    """group_params gives exactly the RTN grid, so with an identity Hessian GPTQ is RTN (symmetric and not)."""
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(16, 72, generator=gen)  # 72: a short last group of 8 when groups are 32
    for scheme_name, g, sym in (
        ("gptq:w4g32", 32, True),
        ("gptq:w3g32-asym", 32, False),
        ("gptq:w4-channel", None, True),
    ):
        scheme = parse_scheme(scheme_name)
        stats = _stats_of(torch.eye(72) * 3.0)  # H proportional to the identity
        got = scheme.fake_quantize(w, stats)
        bits = 4 if "w4" in scheme_name else 3
        assert torch.equal(got, rtn.fake_quantize(w, bits, group_size=g, symmetric=sym)), scheme_name


def test_gptq_never_worse_than_rtn_on_its_objective():
    gen = torch.Generator().manual_seed(2)
    for trial in range(6):
        cols = 48 + 16 * trial
        w = torch.randn(20, cols, generator=gen, dtype=torch.float64)
        x = torch.randn(300, cols, generator=gen, dtype=torch.float64) * (torch.rand(cols, generator=gen) * 4).double()
        x = x + 0.7 * x[:, torch.randperm(cols, generator=gen)]  # correlated inputs
        h = 2 / 300 * x.T @ x
        for bits, sym, act in ((4, True, False), (3, False, True), (2, False, False)):
            scale, zero = group_params(w, bits, 16, sym)
            q = gptq(w, h, scale, zero, *grid(bits, sym), group_size=16, act_order=act, damp=0.01)
            r = rtn.fake_quantize(w, bits, group_size=16, symmetric=sym).double()
            assert _objective(w, q, h) < _objective(w, r, h), (trial, bits)
            # every value is on its group's grid
            codes = torch.round(q / scale.repeat_interleave(16, 1)[:, :cols] + zero.repeat_interleave(16, 1)[:, :cols])
            lo, hi = grid(bits, sym)
            assert codes.min() >= lo and codes.max() <= hi


def test_gptq_dead_inputs_and_bad_hessian():
    w = torch.randn(8, 32, dtype=torch.float64)
    h = torch.eye(32, dtype=torch.float64)
    h[5, 5] = 0  # an input never active: its weights are zeroed, as the library does
    scale, zero = group_params(w, 4, 16, True)
    q = gptq(w, h, scale, zero, *grid(4, True), group_size=16)
    assert torch.all(q[:, 5] == 0) and torch.all(w[:, 5] != 0)
    others = [j for j in range(32) if j != 5]  # independent columns (diagonal H): RTN on the same grid
    assert torch.equal(q[:, others].float(), rtn.fake_quantize(w.float(), 4, group_size=16)[:, others])
    bad = -torch.eye(32, dtype=torch.float64)  # negative definite: no Cholesky even when damped
    with pytest.raises(UserError, match="not positive definite"):
        gptq(w, bad, scale, zero, *grid(4, True), group_size=16)


# -- AWQ ------------------------------------------------------------------------------------------


def test_awq_alpha_zero_is_rtn_and_search_lowers_output_error():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(24, 64, generator=gen)
    x = torch.randn(256, 64, generator=gen) * torch.logspace(-2, 1, 64)[torch.randperm(64, generator=gen)]
    stats = _stats_of(x)

    def q(m):
        return rtn.fake_quantize(m, 4, group_size=32)

    only_zero, alpha = awq(w, stats.mean_abs, stats.rows, q, n_grid=1)
    assert alpha == 0.0 and torch.equal(only_zero.float(), q(w))
    best, alpha = awq(w, stats.mean_abs, stats.rows, q)
    err = lambda m: float(((x.double() @ (w.double() - m.double()).T) ** 2).mean())
    assert alpha > 0 and err(best) < err(q(w))
    # the scheme is the same search; -clip lowers the per-group output error further or keeps it
    s = parse_scheme("awq:w4g32").fake_quantize(w, stats)
    assert torch.allclose(s.double(), best, atol=1e-6)
    clipped = parse_scheme("awq:w4g32-clip").fake_quantize(w, stats)
    assert err(clipped) <= err(s) * 1.0001


def test_calibrated_scheme_costs_and_names():
    shape = (64, 256)
    assert parse_scheme("gptq:w4g128").storage_bits(shape, 16) == 64 * 256 * 4 + 64 * 2 * 16
    assert parse_scheme("gptq:w4g128-asym-actorder").storage_bits(shape, 16) == 64 * 256 * 4 + 64 * 2 * 20
    assert parse_scheme("awq:w4g128").storage_bits(shape, 16) == 64 * 256 * 4 + 64 * 2 * 16 + 256 * 16
    for name in ("gptq:w3g64-asym-actorder-damp0.1", "awq:w4-channel-asym-clip", "gptq:w4g128"):
        assert parse_scheme(name).name == name
    for bad in ("gptq:w9g128", "gptq:w4g128-damp0", "awq:w1g128", "gptq:w4g0"):
        with pytest.raises(UserError):
            parse_scheme(bad)
    with pytest.raises(UserError, match="needs calibration"):
        parse_scheme("gptq:w4g128").fake_quantize(torch.randn(4, 8))


def test_kept_columns_use_their_own_statistics():
    """A kept input column leaves the Hessian with it: the rest equals GPTQ of the compact matrix."""
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(8, 40, generator=gen)
    x = torch.randn(100, 40, generator=gen)
    keep = parse_scheme("gptq:w4g16").with_kept(cols=[3, 17])
    got = keep.fake_quantize(w, _stats_of(x))
    rest = [j for j in range(40) if j not in (3, 17)]
    direct = parse_scheme("gptq:w4g16").fake_quantize(w[:, rest].contiguous(), _stats_of(x[:, rest]))
    assert torch.equal(got[:, [3, 17]], w[:, [3, 17]]) and torch.allclose(got[:, rest], direct)


# -- calibration documents and statistics ---------------------------------------------------------


def _count(docs):
    return [list(range(len(d.text) // 4 + 1)) for d in docs]


def test_calibration_never_overlaps_the_evaluated_documents(tmp_path):
    corpus = load_udhr()
    held = [d for lang in ("eng_Latn", "heb_Hebr") for d in corpus.documents(lang) if split_of(d.id) == "heldout"]
    for spec, target in (("eng", None), ("mix:eng,heb,arb", None), ("target", "heb_Hebr")):
        cal = choose_documents(Calibration(spec, tokens=3000, seed=1), corpus, _count, held, target=target)
        assert cal.docs and all(d.split == "select" for d in cal.docs)
        assert not {d.id for d in cal.docs} & {d.id for d in held}
        if target:
            assert {d.lang for d in cal.docs} == {target}
    mix = choose_documents(Calibration("mix:eng,heb,arb", tokens=600), corpus, _count, held)
    assert {d.lang for d in mix.docs} == {"eng_Latn", "heb_Hebr", "arb_Arab"}
    # evaluating on every split: the select documents overlap, refused
    every = list(corpus.documents("eng_Latn"))
    with pytest.raises(UserError, match="overlaps the evaluated"):
        choose_documents(Calibration("eng"), corpus, _count, every)
    # a file holding an evaluated document's text (whitespace aside) is refused; other text is taken
    f = tmp_path / "cal.txt"
    f.write_text("Some calibration text.\n\n" + "  ".join(held[3].text.split(" ")) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="overlaps the evaluated document"):
        choose_documents(Calibration(str(f)), corpus, _count, held)
    f.write_text("Some calibration text.\n\nAnother one.\n", encoding="utf-8")
    got = choose_documents(Calibration(str(f)), corpus, _count, held)
    assert sorted(d.text for d in got.docs) == ["Another one.", "Some calibration text."]
    check_no_overlap(got.docs, held)  # no error


def test_calibration_seed_and_budget_change_the_set():
    corpus = load_udhr()
    a = choose_documents(Calibration("eng", tokens=400, seed=0), corpus, _count, [])
    b = choose_documents(Calibration("eng", tokens=400, seed=1), corpus, _count, [])
    c = choose_documents(Calibration("eng", tokens=4000, seed=0), corpus, _count, [])
    assert a.digest != b.digest and len(c.docs) > len(a.docs)
    assert a.n_tokens >= 400 and sum(len(t) for t in a.tokens[:-1]) < 400
    assert choose_documents(Calibration("eng", tokens=400, seed=0), corpus, _count, []).digest == a.digest


def test_statistics_equal_an_independent_recomputation(tiny_lm):
    """H, Σ|x| from the hooks on batched, padded windows equal X^T X of each document run alone, capturing the
    inputs with the test's own hooks; q/k/v share one site."""
    lm = tiny_lm("llama")
    corpus = load_udhr()
    docs = [d for d in corpus.documents("eng_Latn")[:3]]
    toks = [lm.tokenizer(d.text, add_special_tokens=False)["input_ids"][: 50 + 20 * i] for i, d in enumerate(docs)]
    cal = CalibrationSet(Calibration("eng"), None, docs, toks)
    names = [n for n, p in lm.model.named_parameters() if n.endswith("proj.weight")]
    stats = collect_statistics(lm.model, names, cal, lm.prefix_token_id, window=64, batch_tokens=256)
    q, k, v = (f"model.layers.0.self_attn.{x}_proj.weight" for x in "qkv")
    assert stats.sites[q] is stats.sites[k] is stats.sites[v]
    assert stats.sites[q] is not stats.sites["model.layers.0.self_attn.o_proj.weight"]
    seen: dict[str, list[torch.Tensor]] = {}
    mods = {n.removesuffix(".weight"): lm.model.get_submodule(n.removesuffix(".weight")) for n in names}
    hooks = [
        m.register_forward_pre_hook(lambda mod, a, n=n: seen.setdefault(n, []).append(a[0][0].double()))
        for n, m in mods.items()
    ]
    with torch.no_grad():
        for t in toks:  # each document alone, in windows of 64 (prefix + 63 new tokens)
            for i in range(0, len(t), 63):
                lm.model(input_ids=torch.tensor([[lm.prefix_token_id, *t[i : i + 63]]]))
    for h in hooks:
        h.remove()
    for n in names:
        x = torch.cat(seen[n.removesuffix(".weight")])
        st = stats.sites[n]
        assert st.n == x.shape[0]
        torch.testing.assert_close(st.xtx, x.T @ x, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(st.abs_sum, x.abs().sum(0), rtol=1e-4, atol=1e-3)
        assert st.rows.shape == (x.shape[0], x.shape[1])  # fewer rows than the cap: all of them


# -- the audit end to end --------------------------------------------------------------------------


@pytest.mark.usefixtures("isolated_cache")
def test_audit_with_gptq_and_calibration(saved_model, capsys, tmp_path):
    model = str(saved_model("llama"))
    out = tmp_path / "a"
    common = ["audit", "--model", model, "--langs", "eng,heb", "--max-tokens", "300", "--n-boot", "50",
              "--window", "128", "--context", "16", "--calibration-tokens", "300", "--min-docs", "5"]  # fmt: skip
    code, _, err = run_cli([*common, "--scheme", "gptq:w4g32", "--calibration", "target", "--out", str(out)], capsys)
    assert code == 0, err
    r = json.loads((out / "audit.json").read_text())
    cal = r["scheme"]["calibration"]
    assert set(cal) == {"eng_Latn", "heb_Hebr"} and r["config"]["split"] == "heldout"
    evaluated = {d["doc_id"] for d in r["documents"]}
    for lang, rec in cal.items():
        ids = [x.split("/", 1) for x in rec["documents"]]
        assert {lg for lg, _ in ids} == {lang} and not {i for _, i in ids} & evaluated
        assert rec["n_tokens"] >= 300 and rec["digest"]
    assert all(row["delta_bpb"]["value"] != 0 for row in r["languages"])
    # GPTQ under eng calibration changes the model differently than under the target calibration
    out2 = tmp_path / "b"
    code, _, err = run_cli([*common, "--scheme", "gptq:w4g32", "--calibration", "eng", "--out", str(out2)], capsys)
    assert code == 0, err
    r2 = json.loads((out2 / "audit.json").read_text())
    assert r2["scheme"]["calibration"]["source"] == "eng"
    heb = lambda res: next(x for x in res["languages"] if x["id"] == "heb_Hebr")["kl_bits"]["value"]
    assert heb(r2) != heb(r)


@pytest.mark.usefixtures("isolated_cache")
def test_audit_calibration_bad_inputs(saved_model, capsys, tmp_path):
    model = str(saved_model("llama"))
    capsys.readouterr()  # the fixture's own output, when it builds the model here
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    base = ["audit", "--model", model, "--langs", "eng", "--max-tokens", "100"]
    cases = (
        (["--scheme", "gptq:w4g128"], "needs calibration data"),
        (["--scheme", "awq:w4g128"], "needs calibration data"),
        (["--scheme", "w4g128", "--calibration", "eng"], "has no effect"),
        (["--scheme", "gptq:w4g128", "--calibration", "xx_Zzzz"], "calibration language"),
        (["--scheme", "gptq:w4g128", "--calibration", "mix:eng,"], "not a calibration spec"),
        (["--scheme", "gptq:w4g128", "--calibration", "eng,heb"], "several languages are a mix"),
        (["--scheme", "gptq:w4g128", "--calibration", str(empty)], "holds no text"),
        (["--scheme", "gptq:w4g128", "--calibration", str(tmp_path / "no.jsonl")], "not found"),
        (["--scheme", "gptq:w4g128", "--calibration", "eng", "--split", "all"], "overlap the evaluated"),
        (["--scheme", "gptq:w11g128", "--calibration", "eng"], "bits must be 2-8"),
        (["--scheme", "gptq:w4g128", "--calibration", "eng", "--tasks", "cloze"], "--tasks does not run calibrated"),
    )
    for i, (extra, message) in enumerate(cases):
        out = tmp_path / f"o{i}"
        code, _, err = run_cli([*base, *extra, "--out", str(out)], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert not out.exists()


def test_document_ids_only_compare_within_the_corpus():
    """File documents are compared by text only (their ids are the file's own)."""
    evaluated = [Document("eng_Latn", "cal.txt#1", "An evaluated text.")]
    check_no_overlap([Document("file", "cal.txt#1", "Other text.")], evaluated)
    with pytest.raises(UserError):
        check_no_overlap([Document("file", "x#9", "An  evaluated\ntext.")], evaluated)


# -- specs ----------------------------------------------------------------------------------------


def _spec(model, calibrations: str, claims: str = "") -> str:
    return f"""
name = "cal-tiny"
n_boot = 50
[corpus]
split = "heldout"
langs = ["eng", "heb"]
max_tokens = 200
min_docs = 5
[eval]
window = 64
context = 8
batch_tokens = 192
[calibration]
tokens = 300
[grid]
models = ["{model}"]
schemes = ["w4g16", "gptq:w4g16"]
{calibrations}
[grid.plans]
all = "{{scheme}}:*"
{claims}
"""


@pytest.mark.usefixtures("isolated_cache")
def test_spec_calibrations_are_trials_with_their_own_keys(saved_model, tmp_path):
    import sqlite3

    from quant_disparity.experiments import run_experiment
    from quant_disparity.experiments.spec import parse_spec

    model = saved_model("llama")
    cals = 'calibrations = { eng = "eng", t = "target" }'
    claim = """[[claims]]
id = "T1"
expr = "delta_bpb(lang='heb', plan='all.t-heb') < delta_bpb(lang='heb', plan='all.eng')"
where = { scheme = "gptq:w4g16" }
"""
    spec = parse_spec(_spec(model, cals, claim))
    names = sorted(t.plan_name + "|" + t.scheme for t in spec.trials)
    assert names == ["all.eng|gptq:w4g16", "all.t-eng|gptq:w4g16", "all.t-heb|gptq:w4g16", "all|w4g16"]
    assert {t.calibration for t in spec.trials} == {"", "eng", "heb"}
    f = tmp_path / "s.toml"
    f.write_text(_spec(model, cals, claim))
    r = run_experiment(f, tmp_path / "run")
    assert r["run"]["computed"] == 3  # all.t-eng is all.eng (same calibration, same content): computed once
    claim_out = r["verdicts"][0]
    assert claim_out["id"] == "T1" and claim_out["verdict"] in ("supported", "refuted", "inconclusive")
    db = sqlite3.connect(tmp_path / "run" / "store.sqlite")
    keys = dict(db.execute("SELECT trial_name, trial_key FROM spec_trials").fetchall())
    by_plan = {n.split("|")[-1] + "|" + n.split("|")[1]: k for n, k in keys.items()}
    assert by_plan["all.t-eng|gptq:w4g16"] == by_plan["all.eng|gptq:w4g16"]
    assert len(set(keys.values())) == 3  # two calibrations are two trials
    # the RTN trial's key is the one a spec without calibrations gives it (existing stores keep their keys)
    f2 = tmp_path / "s2.toml"
    f2.write_text(_spec(model, "").replace('"gptq:w4g16"', '"w3g16"'))
    run_experiment(f2, tmp_path / "run2")
    keys2 = dict(sqlite3.connect(tmp_path / "run2" / "store.sqlite").execute(
        "SELECT trial_name, trial_key FROM spec_trials").fetchall())  # fmt: skip
    rtn = next(k for n, k in keys.items() if n.endswith("|w4g16|all"))
    assert rtn == next(k for n, k in keys2.items() if n.endswith("|w4g16|all"))


@pytest.mark.usefixtures("isolated_cache")
def test_a_calibration_entry_can_have_its_own_token_budget(saved_model, tmp_path):
    # { source, tokens } in [grid] calibrations (and calibration_tokens in [[trials]]) sets that calibration's
    # budget: a size-matched comparison (a mix as small as an English-only set) in one spec, each its own trial
    import json
    import sqlite3

    from quant_disparity.experiments import run_experiment
    from quant_disparity.experiments.spec import parse_spec

    model = saved_model("llama")
    cals = 'calibrations = { eng = "eng", small = { source = "eng", tokens = 40 } }'
    spec = parse_spec(_spec(model, cals))
    budget = {t.plan_name: spec.calibration_of(t).tokens for t in spec.trials if t.calibration}
    assert budget == {"all.eng": 300, "all.small": 40}  # the spec's [calibration] tokens, and the entry's own
    explicit = (
        _spec(model, 'calibrations = { eng = "eng" }')
        + """
[[trials]]
model = "MODEL"
scheme = "gptq:w4g16"
plan = "gptq:w4g16:*"
plan_name = "small2"
calibration = "eng"
calibration_tokens = 40
""".replace("MODEL", str(model))
    )
    t = next(t for t in parse_spec(explicit).trials if t.plan_name == "small2")
    assert (t.calibration, t.calibration_tokens) == ("eng", 40)
    f = tmp_path / "s.toml"
    f.write_text(_spec(model, cals))
    assert run_experiment(f, tmp_path / "run")["run"]["computed"] == 3  # rtn, eng, small: two calibrations
    db = sqlite3.connect(tmp_path / "run" / "store.sqlite")
    meta = {}
    for name, key in db.execute("SELECT trial_name, trial_key FROM spec_trials").fetchall():
        (raw,) = db.execute("SELECT info FROM trials WHERE trial_key = ?", (key,)).fetchone()
        meta[name.split("|")[-1]] = json.loads(raw).get("calibration")
    assert meta["all"] is None  # the RTN trial has no calibration record
    eng, small = meta["all.eng"], meta["all.small"]
    assert (eng["tokens"], small["tokens"]) == (300, 40) and eng["key"] != small["key"]
    # whole documents, drawn in the same seeded order: the smaller budget takes a prefix of the larger one's
    assert 0 < len(small["documents"]) < len(eng["documents"])
    assert small["documents"] == eng["documents"][: len(small["documents"])]
    assert small["n_tokens"] < eng["n_tokens"]
    # results.json carries each trial's calibration record
    results = json.loads(next((tmp_path / "run").glob("*/results.json")).read_text())
    by_plan = {t["plan_name"]: t.get("calibration") for t in results["trials"]}
    assert by_plan["all.small"]["documents"] == small["documents"] and by_plan["all"] is None


def test_a_stored_trial_gains_its_calibration_record_and_nothing_else_changes(tmp_path):
    # stores written before the calibration record was kept get it when the trial is planned again
    import json

    from quant_disparity.experiments.store import Store

    meta = {
        "model": "m", "model_digest": "d", "scheme": "gptq:w4g16", "plan": "gptq:w4g16:*", "resolved": {},
        "corpus_digest": "c", "selection": {}, "eval": {}, "code_version": "v", "n_batches": 1,
        "info": {"cost": {"bits_per_weight": 4.5}},
    }  # fmt: skip
    docs = [{"doc": 0, "lang": "eng_Latn", "doc_id": "a1", "bytes": 10, "chars": 10, "tokens": 3, "n_pred": 2}]
    store = Store(tmp_path / "store.sqlite")
    store.register("k1", meta, docs, "s", "t1", "2026-01-01")
    record = {"source": "eng", "tokens": 40, "n_tokens": 37, "key": "eng@40s0"}
    later = {**meta, "plan": "changed", "info": {"cost": {"bits_per_weight": 9.9}, "calibration": record}}
    store.register("k1", later, docs, "s", "t1", "2026-02-02")
    t = store.trial("k1")
    assert t["info"] == {"cost": {"bits_per_weight": 4.5}, "calibration": record}  # added, cost untouched
    assert t["plan"] == "gptq:w4g16:*" and t["created"] == "2026-01-01"
    store.register("k1", {**later, "info": {"calibration": {**record, "n_tokens": 1}}}, docs, "s", "t1", "x")
    assert json.loads(json.dumps(store.trial("k1")["info"]["calibration"]))["n_tokens"] == 37  # never replaced


def test_spec_calibration_errors(saved_model):
    from quant_disparity.experiments.spec import parse_spec

    model = saved_model("llama")
    with pytest.raises(UserError, match="needs calibration data"):
        parse_spec(_spec(model, ""))
    with pytest.raises(UserError, match="calibration language"):
        parse_spec(_spec(model, 'calibrations = { x = "xx_Zzzz" }'))
    with pytest.raises(UserError, match="overlap"):
        parse_spec(_spec(model, 'calibrations = { e = "eng" }').replace('split = "heldout"', 'split = "all"'))
    with pytest.raises(UserError, match="must be >= 1, got 0"):
        parse_spec(_spec(model, 'calibrations = { e = { source = "eng", tokens = 0 } }'))
    with pytest.raises(UserError, match="needs a source"):
        parse_spec(_spec(model, "calibrations = { e = { tokens = 10 } }"))
    with pytest.raises(UserError, match="unknown field .size. in calibrations.e"):
        parse_spec(_spec(model, 'calibrations = { e = { source = "eng", size = 10 } }'))


def test_the_engine_holds_one_calibrations_tensors_at_a_time(tiny_lm):
    """Quantized tensors of a calibration are dropped with it (their names carry its key), uncalibrated ones stay;
    the estimate's cache term counts the uncalibrated tensors and the largest calibration, not their sum."""
    import dataclasses

    from quant_disparity.estimate import sweep_work
    from quant_disparity.models.modules import build_module_map
    from quant_disparity.quant import QuantEngine, parse_scheme
    from quant_disparity.quant.calibration import CalibrationStats
    from quant_disparity.quant.site_stats import SiteStats

    lm = tiny_lm("llama")
    mm = build_module_map(lm.model)
    engine = QuantEngine(lm.model, mm)
    name = "model.layers.0.mlp.down_proj.weight"
    w = lm.model.get_parameter(name)
    x = torch.randn(64, w.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    site = SiteStats(xtx=x.T @ x, abs_sum=x.abs().sum(0), rows=x.float(), n=64)
    gptq = parse_scheme("gptq:w4g16")
    rtn = parse_scheme("w4g16")
    for key in ("cal-a", "cal-b"):
        engine.add_calibration(CalibrationStats(key, {name: site}))
        engine.quantized(name, dataclasses.replace(gptq, calibration=key))
    engine.quantized(name, rtn)
    assert {k[1] for k in engine._cache} == {"gptq:w4g16@cal-a", "gptq:w4g16@cal-b", "w4g16"}
    engine.drop_calibrations()
    assert {k[1] for k in engine._cache} == {"w4g16"} and not engine.calibrations

    class _NoDocs:
        docs: list = []
        batches: list = []
        total_pred = 0

    other = "model.layers.1.mlp.down_proj.weight"
    configs = {
        "a": {
            name: dataclasses.replace(gptq, calibration="cal-a"),
            other: dataclasses.replace(gptq, calibration="cal-a"),
        },
        "b": {name: dataclasses.replace(gptq, calibration="cal-b")},
        "r": {name: rtn},
    }
    work = sweep_work(mm, _NoDocs(), configs, [], False, 1, 1)
    n = w.numel()
    assert work.quantized_elements == 4 * n and work.cache_elements == n + 2 * n
