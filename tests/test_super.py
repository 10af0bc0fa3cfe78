"""keep:super and zero:super: the plan rules against hand-built copies of tiny models with a planted super
weight (a float64 forward pass for the zeroing, a copy quantized tensor by tensor for the keeping), their bits by
hand, the ablation's arithmetic against numpy, and the bad inputs."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from conftest import run_cli, tiny_model
from test_inspect import PROMPT_IDS, _plant

from quant_disparity.errors import UserError
from quant_disparity.evaluate.sweep import SweepScores
from quant_disparity.inspect import detect_super_weights
from quant_disparity.inspect.effect import ARMS, effect_by_language
from quant_disparity.models.modules import build_module_map, weight_2d
from quant_disparity.quant import QuantEngine, parse_scheme
from quant_disparity.quant.plan import Plan

PLANT = (1, 5, 17)


def _planted(arch: str = "llama"):
    model = tiny_model(arch)
    _plant(model, *PLANT)
    mm = build_module_map(model)
    found = detect_super_weights(model, mm, PROMPT_IDS).coordinates
    assert found == [PLANT]  # the detector's own test covers this; here it feeds the plan
    return model, mm, found


def _down(mm, layer: int):
    return next(p for p in mm.params if p.layer == layer and p.role == "matrix" and p.component == "mlp.down")


def _logits(model, dtype=torch.float32) -> torch.Tensor:
    with torch.no_grad():
        return model.to(dtype)(input_ids=PROMPT_IDS, use_cache=False).logits.double()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_zero_super_equals_a_hand_zeroed_float64_copy(arch):
    model, mm, found = _planted(arch)
    hand = copy.deepcopy(model).double()
    down = _down(mm, PLANT[0])
    with torch.no_grad():
        weight_2d(hand.get_parameter(down.name).data, down)[PLANT[1], PLANT[2]] = 0.0
    want = _logits(hand, torch.float64)
    resolved = Plan.parse("zero:super").with_super(found).resolve(mm)
    assert list(resolved.assignment()) == [down.name]  # nothing else changes
    engine = QuantEngine(model, mm)
    engine.assign_(resolved.assignment())
    got = _logits(model)
    assert float(weight_2d(model.get_parameter(down.name).data, down)[PLANT[1], PLANT[2]]) == 0.0
    assert torch.allclose(got, want, atol=2e-4, rtol=1e-4)
    engine.restore_()
    before = _logits(model)
    assert (before - want).abs().max() > 1e-2  # the super weight matters: the comparison can fail


def test_keep_super_equals_a_copy_whose_only_unquantized_elements_are_the_planted_ones():
    model, mm, found = _planted()
    reference = {p.name: model.get_parameter(p.name).data.clone() for p in mm.params}
    w4 = parse_scheme("w4g128")
    resolved = Plan.parse("keep:super; w4g128:*").with_super(found).resolve(mm)
    down = _down(mm, PLANT[0])
    hand = copy.deepcopy(model)
    with torch.no_grad():
        for name in resolved.assignment():
            info = mm[name]
            w = weight_2d(hand.get_parameter(name).data, info)
            src = w.clone()
            if name == down.name:
                src[PLANT[1], PLANT[2]] = 0.0  # the kept weight sets no scale, as the outlier rule does
            q = w4.fake_quantize(src)
            if name == down.name:
                q[PLANT[1], PLANT[2]] = reference[name].reshape(w.shape)[PLANT[1], PLANT[2]]
            w.copy_(q)
    engine = QuantEngine(model, mm)
    engine.assign_(resolved.assignment())
    for p in mm.params:
        assert torch.equal(model.get_parameter(p.name).data, hand.get_parameter(p.name).data), p.name
    got = weight_2d(model.get_parameter(down.name).data, down)
    ref = weight_2d(reference[down.name], down)
    same = (got == ref).nonzero().tolist()
    assert [PLANT[1], PLANT[2]] in same and len(same) < got.numel() // 4  # quantized elsewhere
    assert torch.equal(_logits(model), _logits(hand))


def test_keep_super_bits_by_hand():
    model, mm, found = _planted()
    down = _down(mm, PLANT[0])
    out_f, in_f = weight_2d(model.get_parameter(down.name).data, down).shape
    # w4g128 by hand: 4 bits a weight plus one 16-bit scale per group of 128 (a short last group counts)
    plain = out_f * (in_f * 4 + math.ceil(in_f / 128) * 16)
    kept = parse_scheme("w4g128").with_points(keep=[(PLANT[1], PLANT[2])])
    assert parse_scheme("w4g128").storage_bits((out_f, in_f), 32) == plain
    assert kept.storage_bits((out_f, in_f), 32) == plain + 32 + 32  # the fp32 value and an int32 index
    uniform = Plan.parse("w4g128:*").resolve(mm)
    resolved = Plan.parse("keep:super; w4g128:*").with_super(found).resolve(mm)
    assert resolved.totals["total_bytes"] * 8 == uniform.totals["total_bytes"] * 8 + 64
    assert resolved.totals["kept_elements_of_quantized_tensors"] == 1
    d = next(d for d in resolved.decisions if d.name == down.name)
    assert d.action == "w4g128+keep-at:5x17" and parse_scheme(d.action) == kept
    # a point inside a kept row is counted once, with the row
    both = parse_scheme("w4g128").with_kept(rows=[PLANT[1]]).with_points(keep=[(PLANT[1], PLANT[2])])
    assert both.storage_bits((out_f, in_f), 32) == parse_scheme("w4g128").with_kept(rows=[PLANT[1]]).storage_bits(
        (out_f, in_f), 32
    )


def test_a_model_without_super_weights_keeps_nothing_and_says_so():
    model = tiny_model("llama")
    mm = build_module_map(model)
    plan = Plan.parse("keep:super; w4g128:*")
    assert plan.needs_super
    bound = plan.with_super([])
    assert str(bound) == "keep:super:none; w4g128:*" and not bound.needs_super
    r = bound.resolve(mm)
    assert r.assignment() == Plan.parse("w4g128:*").resolve(mm).assignment()
    assert r.notes and "found no super weight" in r.notes[0] and r.to_dict()["notes"] == list(r.notes)
    z = Plan.parse("zero:super").with_super([]).resolve(mm)
    assert z.assignment() == {} and "zeros nothing" in z.notes[0]


def test_binding_is_deterministic_and_round_trips():
    plan = Plan.parse("keep:super; w4g128:*").with_super([(2, 40, 100), (0, 3, 9), (2, 40, 100)])
    assert str(plan) == "keep:super:0.3.9,2.40.100; w4g128:*"
    assert Plan.parse(str(plan)) == plan and Plan.from_toml(plan.to_toml()) == plan


def test_bad_super_rules_are_one_line_errors():
    model = tiny_model("llama")
    mm = build_module_map(model)
    cases = [
        ("w4g128:super", "keep or zero rule"),
        ("zero:layer:1", "zero rule takes super-weight selectors only"),
        ("keep:super:1.2; w4g128:*", "not a list of super-weight coordinates"),
        ("keep:super,head:1.0; w4g128:*", "exactly one super part"),
    ]
    for text, msg in cases:
        with pytest.raises(UserError, match=msg):
            Plan.parse(text)
    with pytest.raises(UserError, match="this command does not find them"):
        Plan.parse("keep:super; w4g128:*").resolve(mm)  # unbound
    with pytest.raises(UserError, match="layer 9 is out of range"):
        Plan.parse("keep:super:9.1.1; w4g128:*").resolve(mm)
    with pytest.raises(UserError, match=r"element \(5, 99999\) is out of range"):
        Plan.parse("keep:super:1.5.99999; w4g128:*").resolve(mm)
    with pytest.raises(UserError, match="applies to no quantized tensor"):
        Plan.parse("keep:super:1.5.17; w4g128:component:attn").resolve(mm)


def test_effect_arithmetic_matches_numpy():
    rng = np.random.default_rng(3)
    n = 7
    nll_ref = rng.uniform(50, 80, n)
    scores = SweepScores(nll_ref=nll_ref, n_pred=rng.integers(20, 40, n))
    for k, arm in enumerate(ARMS):
        scores.nll[arm] = nll_ref + rng.uniform(0, 5, n) * (k + 1)
        scores.kl[arm] = rng.uniform(0, 1, n)
        scores.top1[arm] = rng.integers(0, 20, n).astype(float)
    nbytes = rng.uniform(100, 200, n)
    idx = np.arange(n)
    out = effect_by_language(scores, {"x": (idx, nbytes)}, 200, np.random.default_rng(0))["x"]
    ln2 = math.log(2)
    for arm in ARMS:
        want = (scores.nll[arm].sum() - nll_ref.sum()) / (ln2 * nbytes.sum())
        assert out[arm]["delta_bpb"]["value"] == pytest.approx(want, rel=1e-12)
        lo, hi = out[arm]["delta_bpb"]["ci95"]
        assert lo < want < hi
    diff = (scores.nll["uniform"].sum() - scores.nll["keep_super"].sum()) / (ln2 * nbytes.sum())
    assert out["uniform_minus_keep_super_bpb"]["value"] == pytest.approx(diff, rel=1e-12)
    # the same replicate weights: a bootstrap by hand reproduces the interval
    w = np.random.default_rng(0).multinomial(n, np.full(n, 1 / n), size=200)
    reps = (w @ scores.nll["uniform"] - w @ scores.nll["keep_super"]) / (ln2 * (w @ nbytes))
    assert out["uniform_minus_keep_super_bpb"]["ci95"] == pytest.approx(list(np.percentile(reps, [2.5, 97.5])))
    few = effect_by_language(scores, {"x": (idx[:3], nbytes[:3])}, 200, np.random.default_rng(0))["x"]
    assert (
        few["zero_super"]["delta_bpb"]["ci95"] is None and "too few documents" in few["zero_super"]["delta_bpb"]["note"]
    )


def _planted_dir(tmp_path, tokenizer):
    model = tiny_model("llama")
    _plant(model, *PLANT)
    d = tmp_path / "planted"
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.mark.usefixtures("isolated_cache")
def test_super_effect_command_on_a_planted_model(tmp_path, tokenizer, capsys):
    d = _planted_dir(tmp_path, tokenizer)
    out = tmp_path / "fx"
    argv = ["inspect", "super-effect", "--model", str(d), "--langs", "eng,fra", "--max-tokens", "200", "--n-boot", "50"]
    code, stdout, err = run_cli([*argv, "--out", str(out)], capsys)
    assert code == 0, err
    data = json.loads((out / "super_effect.json").read_text())
    assert [tuple(s[:3]) for s in data["super_weights"]] == [PLANT]
    assert data["arms"]["keep_super"]["plan"] == "keep:super:1.5.17; w4g128:*"
    assert data["arms"]["zero_super"]["plan"] == "zero:super:1.5.17"
    for lang, row in data["languages"].items():
        assert row["zero_super"]["delta_bpb"]["value"] != 0, lang
    before = (out / "super_effect.json").read_bytes()
    code, _, err = run_cli([*argv, "--out", str(out)], capsys)
    assert code == 2 and "already holds super_effect.json" in err and err.count("\n") == 1
    assert (out / "super_effect.json").read_bytes() == before
    bad = tmp_path / "bad"
    code, _, err = run_cli([*argv, "--scheme", "w4g999x", "--out", str(bad)], capsys)
    assert code == 2 and err.count("\n") == 1 and not bad.exists()


def test_head_weight_stats_match_numpy_rows():
    from quant_disparity.inspect.heads import head_weight_stats

    model = tiny_model("llama")  # grouped-query: several query heads share a key/value head
    mm = build_module_map(model)
    lay = mm.attention
    assert lay is not None and lay.shared_kv
    got = head_weight_stats(model, mm, "attn.v")
    assert [r["layer"] for r in got] == list(range(mm.n_layers))
    for r in got:
        w = model.get_parameter(r["tensor"]).detach().double().numpy()  # nn.Linear: [out, in]
        assert r["rms"] == pytest.approx(float(np.sqrt((w**2).mean())), rel=1e-12)
        assert len(r["heads"]) == lay.n_kv_heads
        for g, h in enumerate(r["heads"]):
            block = w[g * lay.head_dim : (g + 1) * lay.head_dim]
            assert h["rms"] == pytest.approx(float(np.sqrt((block**2).mean())), rel=1e-12)
            assert h["max_abs"] == pytest.approx(float(np.abs(block).max()), rel=1e-12)
    with pytest.raises(UserError, match="attn.q, attn.k or attn.v"):
        head_weight_stats(model, mm, "mlp.down")


def test_export_refuses_kept_super_weights():
    from quant_disparity.export.base import rtn

    with pytest.raises(UserError, match="single elements"):
        rtn("llmcompressor", parse_scheme("w4g128+keep-at:5x17"))
    with pytest.raises(UserError, match="single elements"):
        rtn("llmcompressor", parse_scheme("w4g128+zero-at:5x17"))


@pytest.mark.usefixtures("isolated_cache")
def test_audit_binds_keep_super_once_and_records_it(tmp_path, tokenizer, capsys):
    d = _planted_dir(tmp_path, tokenizer)
    argv = ["audit", "--model", str(d), "--langs", "eng,fra", "--max-tokens", "120", "--n-boot", "50"]
    code, _, err = run_cli([*argv, "--plan", "keep:super; w4g128:*", "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "a" / "audit.json").read_text())
    plan = data["scheme"]["plan"]
    assert plan["plan"] == data["scheme"]["name"] == "keep:super:1.5.17; w4g128:*"
    assert [(s["layer"], s["row"], s["column"]) for s in plan["super_weights"]["found"]] == [PLANT]
    down = next(t for t in plan["tensors"] if t["name"] == "model.layers.1.mlp.down_proj.weight")
    assert down["action"] == "w4g128+keep-at:5x17" and down["kept_elements"] == 1
    code, _, err = run_cli([*argv, "--plan", "zero:super", "--out", str(tmp_path / "z")], capsys)
    assert code == 0, err
    z = json.loads((tmp_path / "z" / "audit.json").read_text())
    assert [t["name"] for t in z["scheme"]["plan"]["tensors"] if t["action"] not in ("none", "keep")] == [down["name"]]
    assert all(row["delta_bpb"]["value"] != 0 for row in z["languages"])
