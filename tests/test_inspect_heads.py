"""inspect heads: the streamed attention statistics against planted heads and a float64 reference from full
attention maps, token scripts, the specificity measure on hand toys (with its half-split false-positive check),
the rank correlation, the command's outputs and report, and bad input."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from conftest import chromium_images_loaded, run_cli, tiny_model
from scipy import stats as sps

from quant_disparity.corpus.documents import Document
from quant_disparity.errors import UserError
from quant_disparity.evaluate import EvalSettings, prepare
from quant_disparity.inspect.attention import attention_modules, attention_sums, script_ids, token_script
from quant_disparity.inspect.head_specificity import half_split, rank_correlation, specificity
from quant_disparity.models.modules import build_module_map


def _documents(n_docs: int = 5, seed: int = 0):
    """Documents of random token ids of several lengths (several windows at the settings below, padding)."""
    g = torch.Generator().manual_seed(seed)
    docs, tokens = [], []
    for d in range(n_docs):
        n = int(torch.randint(4, 60, (1,), generator=g))
        tokens.append([int(t) for t in torch.randint(3, 200, (n,), generator=g)])
        docs.append(Document("l0", f"{d}", "x" * n))
    return docs, tokens


SETTINGS = EvalSettings(window=24, context=6, batch_tokens=72)
SCRIPT_OF = {t: (t % 3) - 1 for t in range(320)}  # -1 (none), 0 or 1, by hand


# -- planted heads: probabilities known by hand --------------------------------------------------------------------
def test_planted_heads_give_hand_values(tokenizer):
    """Layer 0's attention output is replaced (by a hook registered first) with planted probabilities: head 0
    attends only to the first token, head 1 only to the previous token, head 2 uniformly to every key."""
    model = tiny_model("llama")
    modmap = build_module_map(model)
    docs, tokens = _documents()
    prepared = prepare(docs, tokens, 1, SETTINGS)
    _, name = attention_modules(modmap)[0]

    def plant(mod, args, output):
        attn_out, w = output
        b, h, t, _ = w.shape
        p = torch.zeros_like(w)
        q = torch.arange(t)
        p[:, 0, :, 0] = 1.0
        p[:, 1, q, (q - 1).clamp(min=0)] = 1.0
        p[:, 2] = torch.tril(torch.ones(t, t)) / (q + 1)[:, None].float()
        p[:, 3] = w[:, 3]
        return attn_out, p

    handle = model.get_submodule(name).register_forward_hook(plant)
    try:
        s = attention_sums(model, modmap, prepared, SCRIPT_OF)
    finally:
        handle.remove()
    # the queries of each document by hand: its tokens, each once, at their window position
    for d in range(len(docs)):
        qs = [
            len(w.input_ids) - w.n_scored + i
            for w in (w for b in prepared.batches for w in b if w.doc == d)
            for i in range(w.n_scored)
        ]
        assert s.queries[d] == len(qs) == len(tokens[d])
        assert s.sums["entropy"][d, 0, 0] == pytest.approx(0, abs=1e-5)
        assert s.sums["entropy"][d, 0, 1] == pytest.approx(0, abs=1e-5)
        assert s.sums["entropy"][d, 0, 2] == pytest.approx(sum(math.log(q + 1) for q in qs), rel=1e-5)
        assert s.sums["sink"][d, 0, 0] == pytest.approx(len(qs), rel=1e-6)
        assert s.sums["sink"][d, 0, 1] == pytest.approx(sum(q == 1 for q in qs), abs=1e-6)
        assert s.sums["sink"][d, 0, 2] == pytest.approx(sum(1 / (q + 1) for q in qs), rel=1e-5)
        assert s.sums["distance"][d, 0, 0] == pytest.approx(sum(qs), rel=1e-6)
        assert s.sums["distance"][d, 0, 1] == pytest.approx(len(qs), rel=1e-6)
        assert s.sums["distance"][d, 0, 2] == pytest.approx(sum(q / 2 for q in qs), rel=1e-5)
    assert s.switched_from == "sdpa" and model.config._attn_implementation == "sdpa"  # switched back


# -- float64 reference from full attention maps ----------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3", "gpt_neox"])
def test_streamed_statistics_equal_float64_attention_maps(arch):
    model = tiny_model(arch)
    modmap = build_module_map(model)
    docs, tokens = _documents(seed=1)
    prepared = prepare(docs, tokens, 1, SETTINGS)
    got = attention_sums(model, modmap, prepared, SCRIPT_OF)

    m64 = copy.deepcopy(model).double()
    m64.set_attn_implementation("eager")
    n_layers, n_heads = modmap.n_layers, modmap.attention.n_heads
    want = {k: np.zeros((len(docs), n_layers, n_heads)) for k in ("entropy", "sink", "distance", "same_script")}
    n_script = np.zeros(len(docs))
    for batch in prepared.batches:
        for w in batch:  # one window at a time: no batching, no padding
            ids = torch.tensor([w.input_ids])
            with torch.no_grad():
                att = m64(input_ids=ids, output_attentions=True).attentions
            sid = torch.tensor([SCRIPT_OF[t] for t in w.input_ids])
            for q in range(len(w.input_ids) - w.n_scored, len(w.input_ids)):
                n_script[w.doc] += float(sid[q] >= 0)
                for layer in range(n_layers):
                    p = att[layer][0, :, q, : q + 1]  # [heads, keys <= q]
                    want["entropy"][w.doc, layer] -= (p * torch.log(p.clamp_min(1e-300))).sum(-1).numpy()
                    want["sink"][w.doc, layer] += p[:, 0].numpy()
                    want["distance"][w.doc, layer] += (p * (q - torch.arange(q + 1))).sum(-1).numpy()
                    if sid[q] >= 0:
                        want["same_script"][w.doc, layer] += p[:, sid[: q + 1] == sid[q]].sum(-1).numpy()
    for k, v in want.items():
        np.testing.assert_allclose(got.sums[k], v, rtol=2e-4, atol=2e-4, err_msg=k)
    np.testing.assert_array_equal(got.script_queries, n_script)
    again = attention_sums(model, modmap, prepared, SCRIPT_OF)
    assert all(np.array_equal(again.sums[k], got.sums[k]) for k in want)  # deterministic


def test_an_architecture_without_probabilities_is_refused(tokenizer):
    model = tiny_model("falcon")
    docs, tokens = _documents(2)
    with pytest.raises(UserError, match="do not return their probabilities"):
        attention_sums(model, build_module_map(model), prepare(docs, tokens, 1, SETTINGS), SCRIPT_OF)
    assert model.config._attn_implementation == "sdpa"  # put back after the refusal


# -- scripts ---------------------------------------------------------------------------------------------------------
def test_token_script_by_hand():
    assert token_script("Hello") == "LATIN"
    assert token_script(" Straße") == "LATIN"
    assert token_script("שלום") == "HEBREW"
    assert token_script("中文") == "HAN"
    assert token_script("ሰላም") == "ETHIOPIC"
    assert token_script("नमस्ते") == "DEVANAGARI"  # vowel signs and virama are marks of the same script
    assert token_script("привет") == "CYRILLIC"
    assert token_script("ab中") == "LATIN"  # most letters
    assert token_script("中ab") == "LATIN"
    assert token_script("a中") == "LATIN"  # a tie: the script met first
    assert token_script("ẹ̀") == "LATIN" and token_script("\u0301\u0300") is None  # combining marks: inherited
    for none in ("", " ", "123", ",.!", "\ufffd", "<bos>"[0:1] + ">"):
        assert token_script(none) is None


def test_script_ids_on_the_toy_tokenizer(tokenizer):
    ids = tokenizer("hello שלום 中 ሰላም 42", add_special_tokens=False)["input_ids"] + [tokenizer.bos_token_id]
    of, names = script_ids(tokenizer, ids)
    decoded = {t: tokenizer.decode([t]) for t in ids}
    for t, text in decoded.items():
        s = None if t == tokenizer.bos_token_id else token_script(text)
        assert (of[t] == -1) if s is None else names[of[t]] == s
    assert of[tokenizer.bos_token_id] == -1  # a special token has no script, though "<bos>" has Latin letters
    assert {"LATIN", "HEBREW"} <= set(names)


# -- specificity on hand toys ----------------------------------------------------------------------------------------
def _hand_d(x: np.ndarray, num: np.ndarray, den: np.ndarray, groups: np.ndarray, target: int) -> np.ndarray:
    a, b = groups == target, groups != target
    ma = num[a].sum(0) / den[a].sum()
    mb = num[b].sum(0) / den[b].sum()
    ss = sum(((x[groups == g] - x[groups == g].mean(0)) ** 2).sum(0) for g in np.unique(groups))
    return (ma - mb) / np.sqrt(ss / (len(x) - len(np.unique(groups))))


def test_specificity_finds_planted_features_and_its_half_split_finds_none():
    rng = np.random.default_rng(0)
    n_lang, per, n_feat = 4, 30, 200
    groups = np.repeat(np.arange(n_lang), per)
    den = rng.integers(50, 200, len(groups)).astype(float)
    x = rng.normal(0.5, 0.05, (len(groups), n_feat))
    x[groups == 0, :20] += 0.15  # language 0 departs by 3 within-language sd on the first 20 features
    num = x * den[:, None]
    sp = specificity(num, den, groups, 0, threshold=1.0, n_boot=400, rng=np.random.default_rng(1))
    np.testing.assert_allclose(sp.d, _hand_d(x, num, den, groups, 0), rtol=1e-10)
    assert sp.specific[:20].all() and sp.specific[20:].mean() < 0.02
    assert np.all(sp.lo <= sp.d) and np.all(sp.d <= sp.hi)
    # the false-positive check: one language's documents against themselves
    idx = np.nonzero(groups == 1)[0]
    halves = half_split(len(idx))
    fp = specificity(num[idx], den[idx], halves, 0, threshold=1.0, n_boot=400, rng=np.random.default_rng(2))
    np.testing.assert_allclose(fp.d, _hand_d(x[idx], num[idx], den[idx], halves, 0), rtol=1e-10)
    assert fp.has_interval and fp.specific.mean() < 0.02


def test_beyond_the_common_shift_only_the_heads_that_move_apart_are_specific():
    rng = np.random.default_rng(3)
    n_lang, per, n_feat = 4, 30, 200
    groups = np.repeat(np.arange(n_lang), per)
    den = rng.integers(50, 200, len(groups)).astype(float)
    x = rng.normal(0.5, 0.05, (len(groups), n_feat))
    x[groups == 0] += 0.2  # language 0 moves every feature by 4 sd (longer documents, another script ...)
    x[groups == 0, :20] += 0.25  # and the first 20 by 5 sd more
    num = x * den[:, None]
    raw = specificity(num, den, groups, 0, threshold=2.0, n_boot=400, rng=np.random.default_rng(1))
    assert raw.specific.all() and raw.common_shift == 0.0  # the raw difference calls every feature specific
    rel = specificity(num, den, groups, 0, threshold=2.0, n_boot=400, rng=np.random.default_rng(1), relative=True)
    hand = _hand_d(x, num, den, groups, 0)
    assert rel.common_shift == pytest.approx(float(np.median(hand)), rel=1e-10)
    np.testing.assert_allclose(rel.d, hand - np.median(hand), rtol=1e-10, atol=1e-12)
    assert rel.specific[:20].all() and rel.specific[20:].mean() < 0.02
    assert np.all(rel.lo <= rel.d) and np.all(rel.d <= rel.hi)


def test_too_few_documents_give_no_interval_and_no_specific_head():
    rng = np.random.default_rng(0)
    groups = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1])
    den = np.full(9, 10.0)
    num = rng.normal(size=(9, 5)) * den[:, None]
    num[:3] += 100  # a huge difference, but only three documents
    sp = specificity(num, den, groups, 0, n_boot=100, rng=rng)
    assert not sp.has_interval and not sp.specific.any() and np.isnan(sp.lo).all()
    assert np.isfinite(sp.d).all()


def test_documents_without_script_queries_leave_the_test():
    groups = np.array([0] * 6 + [1] * 6)
    den = np.array([0.0] + [10.0] * 11)
    num = np.arange(12, dtype=float)[:, None] * np.ones((1, 2))
    sp = specificity(num, den, groups, 0, n_boot=100, rng=np.random.default_rng(0))
    keep = den > 0
    x = num[keep] / den[keep, None]
    np.testing.assert_allclose(sp.d, _hand_d(x, num[keep], den[keep], groups[keep], 0))


# -- the rank correlation --------------------------------------------------------------------------------------------
def test_rank_correlation_on_a_toy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    y = np.exp(x) + 0.0  # monotone: rho = 1
    r = rank_correlation(x, y, 200, np.random.default_rng(1))
    assert r["spearman"]["value"] == pytest.approx(1.0) and r["spearman"]["ci95"][0] == pytest.approx(1.0)
    y2 = rng.normal(size=60)
    r2 = rank_correlation(x, y2, 500, np.random.default_rng(1))
    assert r2["spearman"]["value"] == pytest.approx(sps.spearmanr(x, y2).statistic)
    lo, hi = r2["spearman"]["ci95"]
    assert lo < r2["spearman"]["value"] < hi and hi - lo > 0.2
    x_nan = x.copy()
    x_nan[:5] = np.nan
    assert rank_correlation(x_nan, y2, 100, np.random.default_rng(1))["n_heads"] == 55
    assert rank_correlation(x, np.ones(60), 100, np.random.default_rng(1))["spearman"]["value"] is None


# -- the command -----------------------------------------------------------------------------------------------------
LANGS = ("eng_Latn", "heb_Hebr", "cmn_Hans", "amh_Ethi")


def _locate_json(names: list[str], langs, effect) -> dict:
    return {
        "schema": "quant-disparity/locate",
        "granularity": "head",
        "mode": "protect-one",
        "config": {"scheme": "w4g128", "include": []},
        "model": {"name": "tiny-llama"},
        "corpus": {"split": "select"},
        "effect": "share of the reference bpb recovered",
        "languages": [{"id": lang} for lang in langs],
        "results": {
            lang: {"units": {n: {"effect": {"value": effect(lang, i), "ci95": None}} for i, n in enumerate(names)}}
            for lang in langs
        },
    }


def test_run_heads_prediction_and_false_positive_check(tiny_lm, tmp_path):
    from quant_disparity.inspect.head_run import HeadsConfig, head_errors, run_heads

    lm = tiny_lm("llama")
    base = HeadsConfig(langs=LANGS, n_boot=200)
    data = run_heads(base, lm=lm)
    names = [h["name"] for h in data["heads"]]
    assert [h["kv_head"] for h in data["heads"][:4]] == [0, 0, 1, 1]  # grouped-query: 4 query heads, 2 kv heads
    assert data["heads"][0]["kv_shared_by"] == ["L0.h0", "L0.h1"]
    # the half split of one language against itself: no difference exists, the rule finds (almost) none
    assert data["false_positive"]["mean_share"] is not None and data["false_positive"]["mean_share"] <= 0.1
    # REPLICATION.md's row from this result: the shares as measured, the correlation pending without a sweep
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments" / "origin"))
    from export_heads import export
    from rows_heads import head_rows

    (tmp_path / "heads.json").write_text(json.dumps(data))
    exported = export("gemma-3-270m", tmp_path / "heads.json", tmp_path / "no-locate.json")
    (tmp_path / "heads-gemma-3-270m.json").write_text(json.dumps(exported))
    row = head_rows(tmp_path)[0]
    shares = sorted(lang["share_specific"] for lang in data["languages"])
    assert f"median {100 * (shares[1] + shares[2]) / 2:.1f} %" in row[4] and "pending" in row[4]
    assert row[0] == "C20b" and "not comparable" in row[5]
    # the correlation against a locate file whose effects are known: the score itself, and its reverse
    score = {lang["id"]: np.array(lang["specificity"], dtype=float).ravel() for lang in data["languages"]}
    loc = tmp_path / "locate.json"
    loc.write_text(
        json.dumps(
            _locate_json(
                names, LANGS[:3], lambda lang, i: float(-score[lang][i] if lang == "heb_Hebr" else score[lang][i] ** 2)
            )
        )
    )
    data2 = run_heads(HeadsConfig(langs=LANGS, n_boot=200, locate=str(loc)), lm=lm)
    rows = {r["id"]: r for r in data2["prediction"]["languages"]}
    assert rows["eng_Latn"]["specificity"]["spearman"]["value"] == pytest.approx(1.0)
    assert rows["heb_Hebr"]["specificity"]["spearman"]["value"] == pytest.approx(-1.0)
    assert rows["amh_Ethi"]["note"] == "not in the locate run"
    err = np.array([data2["prediction"]["weight_error"][n] for n in names])
    eff = score["cmn_Hans"] ** 2
    assert rows["cmn_Hans"]["weight_error"]["spearman"]["value"] == pytest.approx(sps.spearmanr(err, eff).statistic)
    # the weight error: q rows and o columns of a query head (k/v are shared here), summed over a block's heads,
    # is the whole q and o projections' error
    modmap = build_module_map(lm.model)
    errors = head_errors(lm.model, modmap, _locate_json(names, LANGS, lambda lang, i: 0.0))
    from quant_disparity.quant import parse_scheme

    scheme = parse_scheme("w4g128")
    layer0 = lm.model.model.layers[0].self_attn
    wq, wo = layer0.q_proj.weight.data.float(), layer0.o_proj.weight.data.float()
    dq = (scheme.fake_quantize(wq) - wq).double()
    do = (scheme.fake_quantize(wo) - wo).double()
    d = modmap.attention.head_dim
    total_err = total_ref = 0.0
    for h in range(4):
        e2 = (dq[h * d : (h + 1) * d] ** 2).sum() + (do[:, h * d : (h + 1) * d] ** 2).sum()
        r2 = (wq[h * d : (h + 1) * d].double() ** 2).sum() + (wo[:, h * d : (h + 1) * d].double() ** 2).sum()
        assert errors[f"L0.h{h}"] == pytest.approx(math.sqrt(float(e2 / r2)), rel=1e-9)
        total_err, total_ref = total_err + float(e2), total_ref + float(r2)
    assert total_err == pytest.approx(float((dq**2).sum() + (do**2).sum()), rel=1e-9)


def test_cli_heads_writes_reports_and_refuses_bad_input(saved_model, tmp_path, capsys):
    model = str(saved_model("gemma3"))
    out = tmp_path / "h"
    args = ["inspect", "heads", "--model", model, "--langs", ",".join(LANGS), "--n-boot", "100", "--out", str(out)]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert {"heads.json", "heads.md", "heads_specificity.png"} <= {p.name for p in out.iterdir()}
    data = json.loads((out / "heads.json").read_text())
    assert "switched to eager" in data["attention"]["note"] and "switched to eager" in (out / "heads.md").read_text()
    assert len(data["languages"]) == 4 and all(lang["share_specific"] is not None for lang in data["languages"])
    before = (out / "heads.json").read_bytes()
    code, _, err = run_cli(args, capsys)  # an existing result is kept
    assert code == 2 and "already holds heads.json" in err and (out / "heads.json").read_bytes() == before

    # the HTML report of the output directory: self-contained, its figure decodes in a browser
    code, _, err = run_cli(["report", str(out)], capsys)
    assert code == 0, err
    page = (out / "report.html").read_text()
    assert page.count("<img ") == 1 and "http://" not in page and "https://" not in page
    assert "Share of heads specific" in page
    chromium_images_loaded(page, tmp_path)
    code, _, err = run_cli(["report", str(out), "--format", "latex"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1

    bad = tmp_path / "bad"
    not_locate = tmp_path / "x.json"
    not_locate.write_text("{}")
    layer_locate = tmp_path / "l.json"
    layer_locate.write_text(
        json.dumps({"schema": "quant-disparity/locate", "granularity": "layer", "mode": "protect-one"})
    )
    few = ["--max-tokens", "50"]
    for extra, message in (
        (["--langs", "eng_Latn,xxq_Zzzz"], "xxq"),
        (["--langs", "eng_Latn"], "at least two languages"),
        (["--threshold", "0"], "--threshold"),
        (["--locate", str(tmp_path / "missing.json")], "no such file"),
        (["--locate", str(not_locate)], "not a locate output"),
        (["--locate", str(layer_locate)], "not head / protect-one"),
    ):
        code, _, err = run_cli([*args[:-1], str(bad), *extra], capsys)
        assert code == 2, extra
        assert message in err and len(err.strip().splitlines()) == 1
        assert not bad.exists()
    # one selection document per language at this cap: marked, no interval, no head called specific
    code, _, err = run_cli([*args[:-1], str(bad), *few], capsys)
    assert code == 0, err
    data = json.loads((bad / "heads.json").read_text())
    assert all("too few documents" in lang["note"] and lang["share_specific"] is None for lang in data["languages"])
