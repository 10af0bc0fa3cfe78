"""quant-disparity scores: the weight-only scores against numpy float64 by hand, determinism, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli, tiny_model

from quant_disparity.cli import main
from quant_disparity.models.modules import build_module_map
from quant_disparity.protect import compute_scores
from quant_disparity.protect.weights import weight_score_names
from quant_disparity.quant import parse_scheme


def _layer_weights(model, layer: int) -> np.ndarray:
    """Block ``layer``'s seven projection matrices, flattened, from the state dict (not the module map)."""
    sd = model.state_dict()
    keys = [k for k in sd if k.startswith(f"model.layers.{layer}.") and k.endswith("_proj.weight")]
    assert len(keys) == 7
    return np.concatenate([sd[k].double().numpy().reshape(-1) for k in keys])


def test_layer_scores_match_numpy_by_hand():
    model = tiny_model("llama")
    units = compute_scores(model, build_module_map(model), parse_scheme("fp16"), "layer", seed=0)
    assert [u.unit for u in units] == ["L0", "L1", "L2"]
    for i, u in enumerate(units):
        w = _layer_weights(model, i)
        q = w.astype(np.float32).astype(np.float16).astype(np.float64)  # what fp16 storage keeps
        d = w - w.mean()
        s = u.scores
        assert u.n_params == w.size
        assert s["variance"] == pytest.approx(np.mean(d**2), rel=1e-12)
        assert s["kurtosis"] == pytest.approx(np.mean(d**4) / np.mean(d**2) ** 2 - 3, rel=1e-10)
        assert s["max_over_mean"] == pytest.approx(np.abs(w).max() / np.abs(w).mean(), rel=1e-12)
        assert s["outlier_share"] == pytest.approx(np.mean(np.abs(d) > 3 * np.sqrt(np.mean(d**2))))
        assert s["magnitude"] == pytest.approx(np.abs(w).mean(), rel=1e-12)
        err = np.sqrt(np.sum((w - q) ** 2))
        assert s["rel_frobenius"] == pytest.approx(err / np.sqrt(np.sum(w**2)), rel=1e-9)
        assert s["sqnr_db"] == pytest.approx(10 * np.log10(np.sum(w**2) / err**2), rel=1e-9)


def test_coarser_quantization_scores_more_error():
    model = tiny_model("llama")
    mm = build_module_map(model)
    w8 = compute_scores(model, mm, parse_scheme("w8g32"), "component", ["rel_frobenius"])
    w3 = compute_scores(model, mm, parse_scheme("w3g32"), "component", ["rel_frobenius"])
    assert [u.unit for u in w8] == ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"]
    assert all(a.scores["rel_frobenius"] < b.scores["rel_frobenius"] for a, b in zip(w8, w3, strict=True))


def test_deterministic_given_the_seed():
    model = tiny_model("llama")
    mm = build_module_map(model)
    scheme = parse_scheme("w4g32")
    a = compute_scores(model, mm, scheme, "tensor", seed=3)
    b = compute_scores(model, mm, scheme, "tensor", seed=3)
    c = compute_scores(model, mm, scheme, "tensor", seed=4)
    assert a == b
    assert [u.scores["random"] for u in a] != [u.scores["random"] for u in c]
    assert [u.scores["variance"] for u in a] == [u.scores["variance"] for u in c]
    assert len(a) == 21 and set(weight_score_names()) == set(a[0].scores)


def test_cli_writes_json_and_markdown_and_refuses_bad_input(saved_model, tmp_path, capsys):
    d = str(saved_model("llama"))
    out = tmp_path / "s"
    main(["scores", "--model", d, "--scheme", "w4g32", "--out", str(out), "--seed", "1"])
    data = json.loads((out / "scores.json").read_text())
    assert [u["unit"] for u in data["units"]] == ["L0", "L1", "L2"] and data["seed"] == 1
    assert "| L0 |" in (out / "scores.md").read_text()
    before = (out / "scores.json").read_text()
    code, _, err = run_cli(["scores", "--model", d, "--out", str(out)], capsys)
    assert code == 2 and "already holds scores.json" in err and (out / "scores.json").read_text() == before
    for bad, words in (("--scores=varience", "variance"), ("--granularity=block", "granularity")):
        code, _, err = run_cli(["scores", "--model", d, bad, "--out", str(tmp_path / "t")], capsys)
        assert code == 2 and words in err and not (tmp_path / "t").exists()
