"""Super weights and outlier statistics: a planted super weight is found at exactly its coordinate, a model
without one gives none, and the tail statistics match a numpy float64 computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import tiny_model

from quant_disparity.errors import UserError
from quant_disparity.inspect import Thresholds, detect_super_weights, down_projections, outlier_stats
from quant_disparity.inspect import outliers as outliers_mod
from quant_disparity.models.modules import ModuleMap, build_module_map, weight_2d

PROMPT_IDS = torch.tensor([[1, 40, 41, 52, 60, 77, 90, 101, 150, 200, 33, 44]])


def _plant(model, layer: int, row: int, column: int, boost: float = 300.0, size: float = 100.0) -> float:
    """Make intermediate channel ``column`` of block ``layer`` massive (its up-projection row scaled by
    ``boost``) and connect it to output ``row`` of the down-projection with a weight ``size`` times the
    tensor's standard deviation. Returns the planted weight."""
    mm = build_module_map(model)
    up = next(p for p in mm.params if p.layer == layer and p.role == "matrix" and p.component in ("mlp.up",))
    down = next(p for p in mm.params if p.layer == layer and p.role == "matrix" and p.component == "mlp.down")
    with torch.no_grad():
        weight_2d(model.get_parameter(up.name).data, up)[column] *= boost
        w = weight_2d(model.get_parameter(down.name).data, down)
        w[row, column] = size * float(w.std())
        return float(w[row, column])


def _down_activations(model, layer: int):
    """Input and output of block ``layer``'s down-projection on the prompt, captured by a hook of the test's own."""
    mm = build_module_map(model)
    down = next(p for p in mm.params if p.layer == layer and p.role == "matrix" and p.component == "mlp.down")
    got = {}

    def hook(module, args, output) -> None:
        got.setdefault("xy", (args[0][0].double(), output[0].double()))

    h = model.get_submodule(down.module).register_forward_hook(hook)
    with torch.no_grad():
        model(input_ids=PROMPT_IDS, use_cache=False)
    h.remove()
    return got["xy"]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3", "phi"])
def test_a_planted_super_weight_is_found_at_exactly_its_coordinate(arch):
    model = tiny_model(arch)
    value = _plant(model, layer=1, row=5, column=17)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = detect_super_weights(model, build_module_map(model), PROMPT_IDS)
    assert r.coordinates == [(1, 5, 17)]
    sw = r.super_weights[0]
    assert sw.value == pytest.approx(value, rel=1e-6)
    x, y = _down_activations(model, 1)
    t = int(torch.argmax(y.abs().max(dim=1).values))
    assert sw.token == t
    assert sw.output_activation == pytest.approx(float(y[t, 5]), rel=1e-5)
    assert sw.input_activation == pytest.approx(float(x[t, 17]), rel=1e-5)
    assert sw.share == pytest.approx(value * float(x[t, 17]) / float(y[t, 5]), rel=1e-5)
    assert sw.output_ratio == pytest.approx(abs(float(y[t, 5])) / float(y.abs().median()), rel=1e-5)
    # the weights are as they were (the zeroing of the second round is undone)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(r.layers) == 3 and [p.layer for p in r.layers] == [0, 1, 2]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_a_model_without_a_super_weight_reports_none(arch):
    r = detect_super_weights(tiny_model(arch), build_module_map(tiny_model(arch)), PROMPT_IDS)
    assert r.super_weights == ()
    assert all(p.max_abs_output / p.median_abs_output < Thresholds().ratio for p in r.layers)


def test_a_massive_output_made_by_many_weights_is_not_a_super_weight():
    model = tiny_model("llama")
    mm = build_module_map(model)
    down = next(p for p in mm.params if p.layer == 1 and p.component == "mlp.down")
    up = next(p for p in mm.params if p.layer == 1 and p.component == "mlp.up")
    with torch.no_grad():
        weight_2d(model.get_parameter(up.name).data, up).mul_(30.0)  # every input channel large
        weight_2d(model.get_parameter(down.name).data, down)[5].mul_(100.0)  # one output row, all of it
    r = detect_super_weights(model, mm, PROMPT_IDS)
    assert r.super_weights == ()
    prof = r.layers[1]
    assert prof.row == 5 and prof.max_abs_output / prof.median_abs_output >= 100 and abs(prof.share) < 0.5


def test_two_planted_super_weights_are_both_found():
    model = tiny_model("llama")
    _plant(model, layer=0, row=3, column=9)
    _plant(model, layer=2, row=40, column=100)
    r = detect_super_weights(model, build_module_map(model), PROMPT_IDS)
    assert sorted(r.coordinates) == [(0, 3, 9), (2, 40, 100)]


def test_detector_input_errors():
    model = tiny_model("llama")
    mm = build_module_map(model)
    with pytest.raises(UserError, match="at least 2 tokens"):
        detect_super_weights(model, mm, PROMPT_IDS[:, :1])
    for bad, msg in [({"ratio": 1.0}, "--ratio"), ({"min_share": 0.0}, "--min-share"), ({"rounds": 0}, "--rounds")]:
        with pytest.raises(UserError, match=msg):
            Thresholds(**bad)
    no_mlp = ModuleMap(mm.blocks_path, mm.n_layers, tuple(p for p in mm.params if "mlp.down" not in p.components))
    with pytest.raises(UserError, match="no MLP down-projection"):
        down_projections(no_mlp)


def _numpy_stats(a: np.ndarray) -> dict:
    a = a.astype(np.float64).ravel()
    m = a.sum() / a.size
    d = a - m
    var = (d**2).sum() / a.size
    s = math.sqrt(var)
    return {
        "mean": m,
        "std": s,
        "share_beyond_3sd": float(np.count_nonzero(np.abs(d) > 3 * s)) / a.size,
        "share_beyond_6sd": float(np.count_nonzero(np.abs(d) > 6 * s)) / a.size,
        "kurtosis": float((d**4).sum() / a.size / var**2 - 3),
        "max_over_mean_abs": float(np.abs(a).max() / np.abs(a).mean()),
    }


def test_outlier_statistics_match_numpy_in_float64(monkeypatch):
    monkeypatch.setattr(outliers_mod, "CHUNK", 777)  # several chunks, the last one short
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 40, generator=g)
    w[7, 3] = 40.0  # one far-out weight
    w[100, 0] = -25.0
    got = outlier_stats(w)
    want = _numpy_stats(w.numpy())
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
    assert got["n_beyond_6sd"] == 2 and got["numel"] == 12000
    # a Gaussian tensor: about 0.27 % beyond 3 sd, none beyond 6, kurtosis near 0
    gauss = outlier_stats(torch.randn(1000, 1000, generator=g))
    assert gauss["share_beyond_3sd"] == pytest.approx(math.erfc(3 / math.sqrt(2)), rel=0.1)
    assert gauss["n_beyond_6sd"] == 0 and abs(gauss["kurtosis"]) < 0.05
    with pytest.raises(ValueError):
        outlier_stats(torch.zeros(0))
    assert outlier_stats(torch.zeros(3, 3))["kurtosis"] is None


def test_tensor_outliers_cover_every_matrix_and_embedding_once():
    from quant_disparity.inspect import outliers_summary, tensor_outliers

    model = tiny_model("gemma3")  # tied embedding / LM head: one tensor
    mm = build_module_map(model)
    rows = tensor_outliers(model, mm)
    want = [p.name for p in mm.params if p.role in ("matrix", "embedding")]
    assert [r.name for r in rows] == want and len(set(want)) == len(want)
    s = outliers_summary(rows)
    assert s["tensors"] == len(rows) and s["weights_beyond_6sd"] == sum(r.n_beyond_6sd for r in rows)


# -- the command ---------------------------------------------------------------------------------------------------
@pytest.fixture
def planted_dir(tmp_path, tokenizer):
    model = tiny_model("llama")
    _plant(model, layer=2, row=11, column=70)
    d = tmp_path / "planted"
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.mark.usefixtures("isolated_cache")
def test_inspect_super_weights_command_writes_what_it_found(planted_dir, tokenizer, tmp_path, capsys):
    import json

    from conftest import run_cli

    out = tmp_path / "sw"
    code, stdout, err = run_cli(["inspect", "super-weights", "--model", str(planted_dir), "--out", str(out)], capsys)
    assert code == 0, err
    data = json.loads((out / "super_weights.json").read_text())
    assert [(s["layer"], s["row"], s["column"]) for s in data["super_weights"]] == [(2, 11, 70)]
    assert data["thresholds"] == {"ratio": 100.0, "min_share": 0.5, "rounds": 3}
    assert data["prompt"] == "Apple Inc. is a worldwide tech company."  # the paper's prompt
    ids = tokenizer(data["prompt"], add_special_tokens=False)["input_ids"]
    assert data["n_tokens"] == len(ids) + 1  # and the BOS
    sw = data["super_weights"][0]
    assert sw["token_text"] == tokenizer.decode([([tokenizer.bos_token_id, *ids])[sw["token"]]])
    assert "1 super weight(s)" in (out / "super_weights.md").read_text() and "model.layers.2.mlp.down_proj" in stdout
    before = (out / "super_weights.json").read_bytes()
    code, _, err = run_cli(["inspect", "super-weights", "--model", str(planted_dir), "--out", str(out)], capsys)
    assert code == 2 and "already holds super_weights.json" in err and err.count("\n") == 1
    assert (out / "super_weights.json").read_bytes() == before


@pytest.mark.usefixtures("isolated_cache")
def test_inspect_outliers_command(planted_dir, tmp_path, capsys):
    import json

    from conftest import run_cli

    out = tmp_path / "ol"
    code, stdout, err = run_cli(
        ["inspect", "outliers", "--model", str(planted_dir), "--out", str(out), "--top", "3"], capsys
    )
    assert code == 0, err
    data = json.loads((out / "outliers.json").read_text())
    model = tiny_model("llama")
    _plant(model, layer=2, row=11, column=70)
    down = model.model.layers[2].mlp.down_proj.weight.detach().numpy()
    row = next(r for r in data["tensors"] if r["name"] == "model.layers.2.mlp.down_proj.weight")
    want = _numpy_stats(down)
    assert row["kurtosis"] == pytest.approx(want["kurtosis"], rel=1e-6)
    assert row["n_beyond_6sd"] >= 1  # the planted weight sits at 100 sd
    # the planted tensor tops the table by kurtosis
    first = next(line for line in stdout.splitlines() if line.startswith("| `"))
    assert first.startswith("| `model.layers.2.mlp.down_proj.weight`")
    assert "Outlier structure" in (out / "outliers.md").read_text()


@pytest.mark.parametrize(
    "args,message",
    [
        (["super-weights", "--ratio", "1"], "--ratio must be greater than 1"),
        (["super-weights", "--min-share", "1.5"], "--min-share must be in (0, 1]"),
        (["super-weights", "--rounds", "0"], "--rounds must be in 1..20"),
        (["super-weights", "--prompt", "  "], "--prompt is empty"),
        (["super-weights", "--model", "gemma-3-27m"], "unknown model 'gemma-3-27m'"),
        (["super-weights", "--device", "tpu"], "device"),
        (["outliers", "--dtype", "int3"], "unknown dtype"),
        (["outliers", "--top", "0"], "--top"),
        (["headz"], "No such command 'headz'"),
    ],
)
def test_bad_inspect_input_is_one_line_exit_2_and_writes_nothing(args, message, tmp_path, capsys):
    from conftest import run_cli

    out = tmp_path / "never"
    code, stdout, err = run_cli(["inspect", *args, "--out", str(out)], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()
