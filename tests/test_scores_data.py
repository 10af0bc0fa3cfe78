"""Per-language scores against float64 references computed another way (explicit activations from a separate
forward pass, torch.autograd on a float64 copy), the prediction table against scipy, the CLI and bad input."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from conftest import run_cli, tiny_model
from scipy import stats as sps

from quant_disparity.evaluate import make_windows
from quant_disparity.models.modules import build_module_map
from quant_disparity.protect.data import language_scores
from quant_disparity.protect.predict import rank_agreement
from quant_disparity.quant import parse_scheme


def _windows(seed: int = 0):
    """Two documents of random tokens cut into windows of at most 12 (with a BOS prefix, 4 context tokens)."""
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (20, 7)]
    return [w for i, d in enumerate(docs) for w in make_windows(i, d, 1, 12, 4)]


def _dw(model, name: str, scheme) -> torch.Tensor:
    w = dict(model.named_parameters())[name].detach()
    return (w.double() - scheme.fake_quantize(w).double()).cpu()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_gram_scores_match_explicit_activations_in_float64(arch):
    model = tiny_model(arch)
    mm = build_module_map(model)
    scheme = parse_scheme("w4g32")
    wins = _windows()
    got = {u.unit: u.scores for u in language_scores(model, mm, scheme, wins, ["act_error", "hessian_diag"], "tensor")}
    # reference: a float64 copy; every Linear's inputs stored explicitly, one window at a time
    ref = copy.deepcopy(model).double()
    xs: dict[str, list[torch.Tensor]] = {t: [] for t in got}
    hooks = [
        ref.get_submodule(t.rsplit(".", 1)[0]).register_forward_hook(
            lambda m, a, o, t=t: xs[t].append(a[0].detach().reshape(-1, a[0].shape[-1]))
        )
        for t in got
    ]
    with torch.no_grad():
        for w in wins:
            ref(input_ids=torch.tensor([w.input_ids]))
    for h in hooks:
        h.remove()
    assert len(got) == 21
    for t, s in got.items():
        x = torch.cat(xs[t])  # [n, in]
        n = x.shape[0]
        assert n == sum(len(w.input_ids) for w in wins)
        dw = _dw(model, t, scheme)
        act = math.sqrt(float(((x @ dw.T) ** 2).sum()) / n)
        hdiag = float(((dw**2) * (x**2).sum(0)[None, :]).sum()) / n
        assert s["act_error"] == pytest.approx(act, rel=1e-5)
        assert s["hessian_diag"] == pytest.approx(hdiag, rel=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])  # gemma2: a softcapped head, gradients through the tanh
def test_fisher_matches_autograd_on_a_float64_copy(arch):
    model = tiny_model(arch)
    mm = build_module_map(model)
    scheme = parse_scheme("w3g32")
    wins = _windows(1)
    names = ["fisher", "grad_sq"]
    got = {u.unit: u.scores for u in language_scores(model, mm, scheme, wins, names, "component", token_chunk=3)}
    ref = copy.deepcopy(model).double()
    params = dict(ref.named_parameters())
    targets = mm.default_targets()
    f = {t: torch.zeros_like(params[t]) for t in targets}
    n_pred = 0
    for w in wins:
        ids = torch.tensor([w.input_ids])
        p0 = w.first_scored_position
        logits = ref(input_ids=ids).logits[0, p0:-1]  # the model's own full logits
        loss = torch.nn.functional.cross_entropy(logits, ids[0, p0 + 1 :], reduction="sum")
        for t, g in zip(targets, torch.autograd.grad(loss, [params[t] for t in targets])):
            f[t] += g**2
        n_pred += w.n_scored
    assert set(got) == {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"}
    for comp, s in got.items():
        mine = [t for t in targets if mm[t].components == (comp,)]
        assert len(mine) == 3
        fisher = sum(float((f[t] * _dw(model, t, scheme) ** 2).sum()) for t in mine) / n_pred
        gsq = sum(float(f[t].sum()) for t in mine) / n_pred
        assert s["fisher"] == pytest.approx(fisher, rel=1e-4)
        assert s["grad_sq"] == pytest.approx(gsq, rel=1e-4)
    # the model is left as it was: no gradients, no parameter asking for one beyond what it asked before
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters()) and not model.training


def test_chunking_the_head_changes_nothing_and_runs_are_deterministic():
    model = tiny_model("llama")
    model.requires_grad_(False)  # as a loaded model comes: the gradient scores switch on only what they need
    mm = build_module_map(model)
    scheme = parse_scheme("w4g32")
    wins = _windows(2)
    a = language_scores(model, mm, scheme, wins, ["fisher", "act_error"], "layer", token_chunk=1)
    b = language_scores(model, mm, scheme, wins, ["fisher", "act_error"], "layer", token_chunk=4096)
    c = language_scores(model, mm, scheme, wins, ["fisher", "act_error"], "layer", token_chunk=1)
    assert a == c
    assert not any(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())
    for x, y in zip(a, b, strict=True):
        assert x.scores["fisher"] == pytest.approx(y.scores["fisher"], rel=1e-4)
        assert x.scores["act_error"] == y.scores["act_error"]


def test_rank_agreement_matches_scipy_and_counts_the_top_three():
    rng = np.random.default_rng(0)
    units = [f"L{i}" for i in range(8)]
    score = dict(zip(units, rng.normal(size=8)))
    measured = dict(zip(units, rng.normal(size=8)))
    r = rank_agreement(score, measured, np.random.default_rng(1), 500)
    expect = sps.spearmanr([score[u] for u in units], [measured[u] for u in units]).statistic
    assert r["spearman"]["value"] == pytest.approx(expect, abs=1e-12)
    lo, hi = r["spearman"]["ci95"]
    assert lo <= expect <= hi and r["n_units"] == 8
    top = lambda d: set(sorted(d, key=d.get, reverse=True)[:3])
    assert r["top3_overlap"] == len(top(score) & top(measured)) / 3
    same = rank_agreement(measured, measured, np.random.default_rng(1), 500)
    assert same["spearman"]["value"] == pytest.approx(1.0) and same["top3_overlap"] == 1.0
    flat = rank_agreement(dict.fromkeys(units, 1.0), measured, np.random.default_rng(1), 500)
    assert flat["spearman"]["value"] is None


def test_cli_measured_scores_and_prediction_against_the_locate_file(saved_model, tmp_path, capsys):
    d = str(saved_model("llama"))
    loc = tmp_path / "loc"
    code, _, err = run_cli(
        ["locate", "--model", d, "--langs", "eng,heb", "--max-tokens", "96", "--scheme", "w3g32", "--out", str(loc)],
        capsys,
    )
    assert code == 0, err
    out = tmp_path / "s"
    argv = ["scores", "--model", d, "--scheme", "w3g32", "--langs", "eng,heb", "--max-tokens", "96"]
    code, _, err = run_cli([*argv, "--from-locate", str(loc / "locate.json"), "--out", str(out)], capsys)
    assert code == 0, err
    data = json.loads((out / "scores.json").read_text())
    locate = json.loads((loc / "locate.json").read_text())
    assert data["languages"] == ["eng_Latn", "heb_Hebr"]
    for u in data["units"]:
        for lang in data["languages"]:
            row = u["by_language"][lang]
            assert row["measured"] == locate["results"][lang]["units"][u["unit"]]["effect"]["value"]
            assert set(row) >= {"act_error", "hessian_diag", "fisher", "grad_sq", "measured_kl"}
            assert row["act_error"] > 0 and row["fisher"] > 0
    # the prediction table: Spearman of each score with the measured effect, recomputed here from the JSON
    for lang in data["languages"]:
        y = [u["by_language"][lang]["measured"] for u in data["units"]]
        for name in ("variance", "act_error"):
            x = [u["scores"][name] if name in u["scores"] else u["by_language"][lang][name] for u in data["units"]]
            cell = data["prediction"][name][lang]["spearman"]["value"]
            assert cell == pytest.approx(sps.spearmanr(x, y).statistic)
    assert "Does each score predict" in (out / "scores.md").read_text()
    # deterministic given the seed: a second run writes the same scores
    code, _, err = run_cli([*argv, "--from-locate", str(loc / "locate.json"), "--out", str(tmp_path / "s2")], capsys)
    again = json.loads((tmp_path / "s2" / "scores.json").read_text())
    assert code == 0 and again["units"] == data["units"] and again["prediction"] == data["prediction"]


def test_bad_input_is_one_line_and_writes_nothing(saved_model, tmp_path, capsys):
    d = str(saved_model("llama"))
    other = str(saved_model("gpt2"))
    loc = tmp_path / "loc"
    code, _, err = run_cli(
        ["locate", "--model", other, "--langs", "eng", "--max-tokens", "48", "--out", str(loc)], capsys
    )
    assert code == 0, err
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "something else"}')
    cases = [
        (["--scores", "fishr", "--langs", "eng"], "did you mean 'fisher'"),
        (["--scores", "act_error"], "--langs"),
        (["--scores", "measured"], "--from-locate"),
        (["--langs", "eng", "--from-locate", str(loc / "locate.json")], "not of"),
        (["--from-locate", str(bad)], "not a locate output"),
        (["--from-locate", str(tmp_path / "none.json")], "no such file"),
        (["--langs", "heb", "--scores", "measured", "--from-locate", str(loc / "locate.json")], "no results for heb"),
    ]
    same = ["--model", other, "--from-locate", str(loc / "locate.json")]  # the locate's own model
    cases += [
        ([*same, "--granularity", "component"], "has 'layer' units"),
        ([*same, "--scheme", "w8g32"], "measured scheme 'w4g128'"),
    ]
    for extra, words in cases:
        target = tmp_path / "t"
        model = [] if "--model" in extra else ["--model", d]
        code, _, err = run_cli(["scores", *model, *extra, "--out", str(target)], capsys)
        assert code == 2, (extra, err)
        lines = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("error")]
        assert len(lines) == 1 and words in lines[0], (extra, err)
        assert not target.exists()


def test_c13_plans_keep_at_most_the_structural_plans_weights():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "experiments" / "origin" / "rows_scores.py"
    spec = importlib.util.spec_from_file_location("rows_scores", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    units = [
        {"unit": f"model.layers.{i}.{c}.weight", "n_params": int(n), "scores": {"magnitude": float(m)}}
        for i in range(6)
        for c, n, m in zip(("q", "k", "up"), rng.integers(10, 100, 3), rng.random(3))
    ]
    size = {u["unit"]: u["n_params"] for u in units}
    plans = mod.c13_plans({"units": units})
    structural = [u["unit"] for u in units if ".layers.0." in u["unit"] or ".layers.5." in u["unit"]]
    assert plans["keep_L0_last"] == structural
    budget = sum(size[t] for t in structural)
    assert set(plans) == {"keep_L0_last", "keep_random_0", "keep_random_1", "keep_random_2", "keep_magnitude"}
    for name, kept in plans.items():
        assert sum(size[t] for t in kept) <= budget and len(set(kept)) == len(kept), name
    # magnitude: taken in order of mean |w| while they fit; the largest always fits first
    by_mag = sorted(units, key=lambda u: -u["scores"]["magnitude"])
    assert plans["keep_magnitude"][0] == by_mag[0]["unit"]
    assert plans["keep_random_0"] != plans["keep_random_1"] and mod.c13_plans({"units": units}) == plans
