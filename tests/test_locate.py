"""Sweeps: exactness of replay and shared-reference scoring, locate's effects and pairs, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import CORE_ARCHS, tiny_model
from conftest import run_cli as _run
from golden import reference as ref

from quant_disparity.corpus import load_udhr
from quant_disparity.errors import UserError
from quant_disparity.evaluate import EvalSettings, Forward, prepare, score_documents, tokenize
from quant_disparity.evaluate.sweep import sweep
from quant_disparity.locate import LocateConfig, make_units, parse_unit, run_locate
from quant_disparity.models.modules import build_module_map
from quant_disparity.quant import QuantEngine, parse_scheme


def _prepared(lm, n=2):
    c = load_udhr()
    docs = [d for lang in ("eng_Latn", "heb_Hebr") for d in c.documents(lang)[:n]]
    return prepare(
        docs, tokenize(lm.tokenizer, docs), lm.prefix_token_id, EvalSettings(window=64, context=8, batch_tokens=256)
    )


@pytest.mark.parametrize("arch", CORE_ARCHS + ("opt", "falcon"))
def test_sweep_equals_one_evaluation_per_configuration(arch, tiny_lm):
    lm = tiny_lm(arch)
    mm = build_module_map(lm.model)
    engine = QuantEngine(lm.model, mm)
    universe = mm.default_targets()
    s = parse_scheme("w3g16")
    units = make_units(mm, universe, "layer")
    configs = {"all": {t: s for t in universe}}
    for u in units:
        configs[u.name] = {t: s for t in universe if t not in u.tensors}
    prep = _prepared(lm)
    fw = Forward(lm.model)
    fast = sweep(fw, prep, engine, configs, bases=["all"], reuse=True, vocab_chunk=100)
    assert fast.stats["replay"] and fast.stats["block_work_saved"] > 0.2
    slow = sweep(fw, prep, engine, configs, reuse=False, vocab_chunk=100)
    assert slow.stats["block_work_saved"] == 0
    for name, cfg in configs.items():
        one = score_documents(
            fw, prep, use_reference=engine.restore_, use_model=lambda c=cfg: engine.assign_(c), vocab_chunk=100
        )
        engine.restore_()
        np.testing.assert_allclose(fast.nll[name], one.nll, rtol=1e-6)
        np.testing.assert_allclose(fast.kl[name], one.kl, rtol=1e-5, atol=1e-9)
        np.testing.assert_array_equal(fast.top1[name], one.top1)
        np.testing.assert_array_equal(fast.nll[name], slow.nll[name])  # replay is bit-exact
        np.testing.assert_allclose(fast.nll_ref, one.nll_ref, rtol=1e-12)


def test_units_by_granularity():
    mm = build_module_map(tiny_model("llama"))
    universe = mm.default_targets()
    layers = make_units(mm, universe, "layer")
    assert [u.name for u in layers] == ["L0", "L1", "L2"]
    comps = make_units(mm, universe, "component")
    assert {u.name for u in comps} == {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"}
    both = make_units(mm, universe, "layer×component")
    assert len(both) == 21 and both[0].name == "L0.attn.q"
    for units in (layers, comps, both):  # a partition of the universe
        flat = [t for u in units for t in u.tensors]
        assert sorted(flat) == sorted(universe)
    assert parse_unit("L-1", mm, universe).name == "L2"
    assert parse_unit("L1.mlp", mm, universe).tensors == tuple(t for t in universe if ".1.mlp." in t)
    with pytest.raises(UserError, match="out of range"):
        parse_unit("L3", mm, universe)
    with pytest.raises(UserError, match="names no quantized tensor"):
        parse_unit("embed.token", mm, universe)


@pytest.fixture
def model_dir(saved_model):
    return saved_model("llama")


pytestmark = pytest.mark.usefixtures("isolated_cache")


def _reference_bpb(model_dir, langs, max_tokens, window, context, quantized_sets: dict[str, set[str]]):
    """{config: {lang: bpb}} by separate full passes: for each configuration a fresh copy of the model with exactly
    those weights w2g16-quantized (tests/golden/reference.py), every window alone, log_softmax in float64."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    corpus = load_udhr()
    texts = {}
    for lang in langs:
        docs = corpus.documents(lang)
        toks = [list(t) for t in tok([d.text for d in docs], add_special_tokens=False)["input_ids"]]
        k = ref.take_until_tokens([len(t) for t in toks], max_tokens)
        texts[lang] = (toks[:k], sum(len(d.text.encode("utf-8")) for d in docs[:k]))
    out = {}
    for name, quantized in quantized_sets.items():
        model = ref.quantized_copy(base, 2, 16, names=sorted(quantized)).double().eval()
        out[name] = {
            lang: ref.bpb(sum(ref.document_nll(model, t, tok.bos_token_id, window, context) for t in toks), n_bytes)
            for lang, (toks, n_bytes) in texts.items()
        }
    return out, {lang: (len(toks), n_bytes) for lang, (toks, n_bytes) in texts.items()}


@pytest.mark.parametrize("mode", ["protect-one", "quantize-only"])
def test_locate_effects_equal_separate_full_passes(model_dir, mode):
    """Each configuration's bpb, each unit's effect and each pair's interaction against an independent
    recomputation: one plain float64 forward pass per configuration, no shared reference, no replay."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = LocateConfig(
        model=str(model_dir),
        scheme="w2g16",
        langs=("eng", "heb"),
        max_tokens=120,
        mode=mode,
        pairs=("L0", "L-1", "mlp"),
        n_boot=100,
        split="all",
        eval=EvalSettings(window=64, context=16, batch_tokens=512),
    )
    d = run_locate(cfg).to_dict()
    assert d["schema"] == "quant-disparity/locate" and [u["name"] for u in d["units"]] == ["L0", "L1", "L2"]
    assert d["timing"]["configurations"] == 1 + 3 + 1 + 3  # all, 3 layers, the extra unit "mlp", 3 pairs
    assert d["pairs"] == [["L0", "L2"], ["L0", "mlp"], ["L2", "mlp"]]

    names = ref.block_linear_weights(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32))
    assert len(names) == 3 * 7
    units = {f"L{i}": {n for n in names if f".layers.{i}." in n} for i in range(3)}
    units["mlp"] = {n for n in names if ".mlp." in n}
    pairs = {
        "L0+L2": units["L0"] | units["L2"],
        "L0+mlp": units["L0"] | units["mlp"],
        "L2+mlp": units["L2"] | units["mlp"],
    }
    every = set(names)
    sets = {"fp": set(), "all": every}
    for name, tensors in {**units, **pairs}.items():
        sets[name] = every - tensors if mode == "protect-one" else tensors
    bpb, sizes = _reference_bpb(model_dir, ("eng_Latn", "heb_Hebr"), 120, 64, 16, sets)

    assert [(x["id"], x["n_docs"], x["n_bytes"]) for x in d["languages"]] == [
        (lang, *sizes[lang]) for lang in ("eng_Latn", "heb_Hebr")
    ]
    close = dict(rel=1e-5)
    for lang, r in d["results"].items():
        b = {k: v[lang] for k, v in bpb.items()}
        fp, all_q = b["fp"], b["all"]
        assert abs(all_q - fp) > 1e-3 * fp  # w2g16 changes the tiny model's bpb measurably
        assert r["bpb_fp"]["value"] == pytest.approx(fp, **close)
        assert r["all_quantized"]["bpb"]["value"] == pytest.approx(all_q, **close)
        for u in ("L0", "L1", "L2"):
            row = r["units"][u]
            assert row["bpb"]["value"] == pytest.approx(b[u], **close)
            expected = (all_q - b[u]) / fp if mode == "protect-one" else (b[u] - fp) / fp
            assert row["effect"]["value"] == pytest.approx(expected, rel=1e-3, abs=1e-5)
            lo, hi = row["effect"]["ci95"]
            assert lo <= row["effect"]["value"] <= hi
        assert sorted(r["ranking"], key=lambda u: -r["units"][u]["effect"]["value"]) == r["ranking"]
        for ab, (a, c) in (("L0+L2", ("L0", "L2")), ("L0+mlp", ("L0", "mlp")), ("L2+mlp", ("L2", "mlp"))):
            p = r["pairs"][ab]
            assert p["bpb"]["value"] == pytest.approx(b[ab], **close)
            if mode == "protect-one":  # recovery(AB) - recovery(A) - recovery(B)
                expected = ((all_q - b[ab]) - (all_q - b[a]) - (all_q - b[c])) / fp
            else:  # damage(AB) - damage(A) - damage(B)
                expected = ((b[ab] - fp) - (b[a] - fp) - (b[c] - fp)) / fp
            assert p["interaction"]["value"] == pytest.approx(expected, rel=1e-3, abs=1e-5)


def test_locate_cli_writes_json_markdown_and_figures(model_dir, tmp_path, capsys):
    out = tmp_path / "loc"
    code, stdout, err = _run(
        [
            "locate",
            "--model",
            str(model_dir),
            "--langs",
            "eng,heb,amh",
            "--max-tokens",
            "80",
            "--scheme",
            "w3g16",
            "--granularity",
            "component",
            "--n-boot",
            "50",
            "--window",
            "128",
            "--split",
            "all",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    data = json.loads((out / "locate.json").read_text())
    assert data["granularity"] == "component" and len(data["languages"]) == 3
    for png in ("heatmap.png", "bars.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 5000
    assert "## Effect by unit and language" in (out / "locate.md").read_text()
    code, _, err = _run(["locate", "--model", str(model_dir), "--out", str(out)], capsys)
    assert code == 2 and "already holds locate.json" in err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--granularity", "block"], "unknown granularity"),
        (["--granularity", "neurons:x"], "neurons takes a group size"),
        (["--mode", "protect-all"], "Invalid value for '--mode'"),
        (["--pairs", "L0"], "--pairs needs at least two units"),
        (["--scheme", "w4x"], "unknown scheme"),
        (["--langs", "xx"], "has no language"),
    ],
)
def test_locate_bad_input(args, message, capsys, tmp_path):
    code, _, err = _run(["locate", *args, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_locate_bad_units(model_dir, capsys, tmp_path):
    code, _, err = _run(
        ["locate", "--model", str(model_dir), "--pairs", "L0,L9", "--langs", "eng", "--out", str(tmp_path / "o")],
        capsys,
    )
    assert code == 2 and "layer 9 is out of range" in err


def test_a_scheme_that_changes_nothing_gives_undefined_shares_not_a_crash(tokenizer):
    """Weights already on the float16 grid: ``fp16`` changes nothing, so the all-quantized damage is exactly
    zero and the share of it recovered by a unit is undefined (it used to raise ZeroDivisionError)."""
    import torch

    from quant_disparity.models import wrap_model

    model = tiny_model("llama")
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    lm = wrap_model(model, tokenizer, name="tiny-llama-fp16-grid")
    cfg = LocateConfig(
        scheme="fp16",
        langs=("eng",),
        max_tokens=200,
        n_boot=100,
        split="all",
        eval=EvalSettings(window=128, context=16, batch_tokens=512),
    )
    d = run_locate(cfg, lm=lm).to_dict()
    for r in d["results"].values():
        assert r["all_quantized"]["delta_bpb"]["value"] == 0
        for row in r["units"].values():
            share = row["share_of_damage_recovered"]
            assert share["value"] is None and "includes zero" in share["note"]
            assert row["effect"]["value"] == 0
