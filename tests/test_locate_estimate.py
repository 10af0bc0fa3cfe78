"""``locate --estimate SCORE --top K``: the units measured are the top K of the score (computed here by hand or by
the separate ``scores`` command), their effects are the full sweep's, the recovery measure on a toy, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

from quant_disparity.protect.estimate import recovery

COMMON = ["--langs", "eng,heb", "--max-tokens", "96", "--scheme", "w3g32", "--n-boot", "100"]


def _locate(model: str, out, capsys, *extra: str) -> dict:
    code, _, err = run_cli(["locate", "--model", model, *COMMON, *extra, "--out", str(out)], capsys)
    assert code == 0, err
    return json.loads((out / "locate.json").read_text())


def _rel_frobenius_by_hand(model_dir) -> dict[str, float]:
    """||W - Q(W)|| / ||W|| per component over the blocks' Linear weights, float64, from the saved weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from quant_disparity.quant import parse_scheme

    m = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    scheme = parse_scheme("w3g32")
    err: dict[str, float] = {}
    ref: dict[str, float] = {}
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in name:
            parent, leaf = name.rsplit(".", 2)[1:]
            comp = {"self_attn": "attn", "mlp": "mlp"}[parent] + "." + leaf.replace("_proj", "")
            w = mod.weight.data
            q = scheme.fake_quantize(w)
            err[comp] = err.get(comp, 0.0) + float(((w.double() - q.double()) ** 2).sum())
            ref[comp] = ref.get(comp, 0.0) + float((w.double() ** 2).sum())
    return {c: float(np.sqrt(err[c] / ref[c])) for c in err}


def test_estimate_measures_the_top_k_of_a_weight_score_with_the_full_sweeps_effects(saved_model, tmp_path, capsys):
    model = str(saved_model("llama"))
    full = _locate(model, tmp_path / "full", capsys, "--granularity", "component")
    est = _locate(
        model, tmp_path / "est", capsys, "--granularity", "component", "--estimate", "rel_frobenius", "--top", "3"
    )
    hand = _rel_frobenius_by_hand(model)
    units = [u["name"] for u in full["units"]]
    assert sorted(units) == sorted(hand), (units, hand)  # the units are the components, named alike
    expected = sorted(units, key=lambda u: -hand[u])[:3]
    e = est["estimate"]
    assert e["measured_units"] == expected and sorted(e["unmeasured_units"]) == sorted(set(units) - set(expected))
    assert [u["name"] for u in est["units"]] == [u for u in units if u in expected]
    assert est["timing"]["configurations"] == 4  # the 3 units and everything quantized
    for r in e["ranking"]:
        assert r["score"]["all"] == pytest.approx(hand[r["unit"]], rel=1e-9)
    # the measured units' effects are the full sweep's (same documents, same configurations)
    for lang in ("eng_Latn", "heb_Hebr"):
        for u in expected:
            a = est["results"][lang]["units"][u]["effect"]["value"]
            b = full["results"][lang]["units"][u]["effect"]["value"]
            assert a == pytest.approx(b, rel=1e-6, abs=1e-9)
        assert set(est["results"][lang]["units"]) == set(expected)
    assert "Estimated: only the 3 of 7 units" in (tmp_path / "est" / "locate.md").read_text()
    # the config records the estimate; a plain locate's config keeps its shape
    assert est["config"]["estimate"] == "rel_frobenius" and est["config"]["top"] == 3
    assert "estimate" not in full["config"] and "estimate" not in full


def test_estimate_with_a_per_language_score_orders_by_mean_rank_of_the_scores_command(saved_model, tmp_path, capsys):
    model = str(saved_model("llama"))
    est = _locate(model, tmp_path / "est", capsys, "--estimate", "fisher", "--top", "2")
    code, _, err = run_cli(
        ["scores", "--model", model, "--scheme", "w3g32", "--langs", "eng,heb", "--max-tokens", "96"]
        + ["--scores", "fisher", "--out", str(tmp_path / "s")],
        capsys,
    )
    assert code == 0, err
    scores = json.loads((tmp_path / "s" / "scores.json").read_text())
    units = [u["unit"] for u in scores["units"]]
    ranks = {u: 0.0 for u in units}
    for lang in ("eng_Latn", "heb_Hebr"):
        v = {u["unit"]: u["by_language"][lang]["fisher"] for u in scores["units"]}
        for i, u in enumerate(sorted(units, key=lambda u: (-v[u], units.index(u)))):
            ranks[u] += i / 2
    expected = sorted(units, key=lambda u: (ranks[u], units.index(u)))[:2]
    assert est["estimate"]["measured_units"] == expected
    for r in est["estimate"]["ranking"]:
        assert r["mean_rank"] == pytest.approx(ranks[r["unit"]])
        for lang in ("eng_Latn", "heb_Hebr"):
            want = next(u["by_language"][lang]["fisher"] for u in scores["units"] if u["unit"] == r["unit"])
            assert r["score"][lang] == pytest.approx(want, rel=1e-6)


def test_recovery_on_a_hand_toy():
    full = {
        "results": {
            "eng": {"units": {u: {"effect": {"value": v}} for u, v in zip("ABCDE", (0.5, 0.1, 0.4, None, 0.2))}},
            "heb": {"units": {u: {"effect": {"value": v}} for u, v in zip("ABCDE", (0.0, 0.3, 0.1, 0.2, 0.6))}},
        }
    }
    r = recovery(full, ["A", "B"], 2)
    assert r["eng"] == {"full_top": ["A", "C"], "share_of_full_top": 0.5, "best_found": True}
    assert r["heb"] == {"full_top": ["E", "B"], "share_of_full_top": 0.5, "best_found": False}


@pytest.mark.parametrize(
    "args,message",
    [
        (["--top", "3"], "--top needs --estimate"),
        (["--estimate", "fisher"], "--estimate needs --top"),
        (["--estimate", "fisher", "--top", "0"], "--estimate needs --top"),
        (["--estimate", "measured", "--top", "2"], "a measured score comes from a full sweep"),
        (["--estimate", "fishr", "--top", "2"], "did you mean 'fisher'"),
        (["--estimate", "fisher", "--top", "2", "--granularity", "head"], "--estimate works on layer or component"),
        (["--estimate", "variance", "--top", "2", "--pairs", "L0,L1"], "does not take --pairs"),
    ],
)
def test_bad_estimate_options_are_one_line_exit_2_nothing_written(args, message, capsys, tmp_path):
    code, _, err = run_cli(["locate", *args, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()
