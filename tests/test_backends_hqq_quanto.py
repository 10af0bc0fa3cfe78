"""The hqq and quanto scheme kinds: each equals its library's own quantize -> dequantize (called here directly,
through another entry point of the library), counts the bits the library stores, honours keep-rules, refuses
what the library refuses in one line, and the library's own forward agrees with our evaluation of the dequantized
weights on a tiny model."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import IN_CI, run_cli

from quant_disparity.corpus import load_udhr
from quant_disparity.errors import UserError
from quant_disparity.evaluate import EvalSettings, Forward, prepare, score_documents, tokenize
from quant_disparity.evaluate.real import TOLERANCE_BPB, real_vs_simulated
from quant_disparity.models.modules import build_module_map
from quant_disparity.quant import QuantEngine, parse_scheme
from quant_disparity.quant.backends.base import MissingExtra
from quant_disparity.quant.plan import Plan
from quant_disparity.quant.real import LibraryLayers

try:
    import hqq.core.quantize as hqq_quantize
    import optimum.quanto as quanto
except ImportError:
    if IN_CI:  # make test installs both extras: a missing one is a failure there
        raise
    pytest.skip("needs the hqq and quanto extras: pip install 'quant-disparity[hqq,quanto]'", allow_module_level=True)


def _weights(out: int, inp: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) * 0.05
    w[0, 3] = 0.9  # an outlier, so that groups differ in range
    return w


# -- the same numbers as the library's own calls ---------------------------------------------------------------
def _hqq_reference(w: torch.Tensor, bits: int, group: int | None, axis: int = 1, optimize: bool = True):
    """The library's Quantizer (not its HQQLinear layer, which the scheme uses), with the meta-data in float16
    as the layer keeps it."""
    group = group or (w.shape[1] if axis == 1 else w.shape[0])
    W_q, meta = hqq_quantize.Quantizer.quantize(
        w, nbits=bits, channel_wise=True, group_size=group, optimize=optimize, round_zero=bits == 4, axis=axis,
        device="cpu", compute_dtype=torch.float16,
    )  # fmt: skip
    meta = {k: v.to(torch.float16) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in meta.items()}
    meta["compute_dtype"] = torch.float16
    return hqq_quantize.Quantizer.dequantize(W_q, meta).float()


@pytest.mark.parametrize(
    "name, bits, group, axis, optimize",
    [
        ("hqq:w4g64", 4, 64, 1, True),
        ("hqq:w3g32", 3, 32, 1, True),
        ("hqq:w2g16", 2, 16, 1, True),
        ("hqq:w8", 8, None, 1, True),
        ("hqq:w4g64-noopt", 4, 64, 1, False),
        ("hqq:w4g64-axis0", 4, 64, 0, True),
    ],
)
def test_hqq_scheme_equals_the_librarys_quantizer(name, bits, group, axis, optimize):
    w = _weights(64, 256)
    ours = parse_scheme(name).fake_quantize(w)
    assert ours.dtype == torch.float32 and ours.shape == w.shape
    torch.testing.assert_close(ours, _hqq_reference(w, bits, group, axis, optimize), rtol=0, atol=0)
    assert not torch.equal(ours, w)


def _quanto_reference(w: torch.Tensor, bits: int, group: int | None):
    """quanto's optimizer and quantize_weight called directly on the float16 weight (not through QLinear)."""
    w16 = w.to(torch.float16)
    if bits == 8:
        scale = quanto.AbsmaxOptimizer()(w16, qtype=quanto.qint8, axis=0)
        q = quanto.quantize_weight(w16, qtype=quanto.qint8, axis=0, scale=scale)
    else:
        qtype = quanto.qint4 if bits == 4 else quanto.qint2
        scale, shift = quanto.MaxOptimizer()(w16, qtype=qtype, axis=0, group_size=group)
        q = quanto.quantize_weight(w16, qtype=qtype, axis=0, scale=scale, shift=shift, group_size=group)
    return q.dequantize().float()


@pytest.mark.parametrize(
    "name, shape, bits, group",
    [
        ("quanto:w4", (64, 256), 4, 128),  # QLinear's own choice: 128 divides 256
        ("quanto:w4", (64, 192), 4, 96),  # 128 does not divide 192: it steps down by 32
        ("quanto:w4g64", (64, 256), 4, 64),
        ("quanto:w2g32", (64, 256), 2, 32),
        ("quanto:w8", (64, 256), 8, None),
    ],
)
def test_quanto_scheme_equals_the_librarys_quantize_weight(name, shape, bits, group):
    w = _weights(*shape)
    ours = parse_scheme(name).fake_quantize(w)
    torch.testing.assert_close(ours, _quanto_reference(w, bits, group), rtol=0, atol=0)
    assert not torch.equal(ours, w)


def test_quanto_w8_is_symmetric_absmax_per_row_by_hand():
    """By hand: scale = max |w| / 127 per row (float16), codes round(w / scale) with the quotient in float16 (the
    library divides float16 tensors)."""
    w = _weights(16, 64).double()
    w16 = w.to(torch.float16).double()
    scale = (w16.abs().amax(dim=1, keepdim=True) / 127).to(torch.float16).double()
    codes = torch.clamp(torch.round((w16 / scale).to(torch.float16).double()), -128, 127)
    hand = codes * scale
    ours = parse_scheme("quanto:w8").fake_quantize(w.float()).double()
    # float16 storage of the product: within half a float16 ulp of the hand value
    torch.testing.assert_close(ours, hand, rtol=2**-11, atol=1e-7)
    assert (ours - w).abs().max() <= scale.max() / 2 * (1 + 1e-3)


# -- bits stored ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, shape, bits",
    [
        # codes 4 bits + a float16 scale and zero per group of 64: 8*128*4 + 16 groups * 32
        ("hqq:w4g64", (8, 128), 8 * 128 * 4 + 16 * 32),
        # 5-bit codes take a byte each in the library
        ("hqq:w5g64", (8, 128), 8 * 128 * 8 + 16 * 32),
        # 3-bit: ten codes per int32, the number of groups (5) padded to 10: one int32 row of 64
        ("hqq:w3g64", (4, 80), 10 // 10 * 64 * 32 + 5 * 32),
        # quanto int4, group 128 (QLinear's choice for 256 inputs): 4-bit codes + float16 scale and shift
        ("quanto:w4", (8, 256), 8 * 256 * 4 + 16 * 32),
        # 100 inputs: no group of 128..32 fits, so one scale and shift per output row
        ("quanto:w4", (8, 100), 8 * 100 * 4 + 8 * 32),
        # int8 codes and one float16 scale per row, no shift
        ("quanto:w8", (8, 256), 8 * 256 * 8 + 8 * 16),
    ],
)
def test_storage_bits_by_hand(name, shape, bits):
    assert parse_scheme(name).storage_bits(shape, 32) == bits


def test_storage_bits_are_the_bytes_of_the_librarys_quantized_layer():
    w = _weights(32, 640)
    layer = parse_scheme("hqq:w4g64").library_module(w)  # type: ignore[attr-defined]
    stored = layer.W_q.numel() * layer.W_q.element_size() + sum(
        v.numel() * v.element_size() for v in layer.meta.values() if torch.is_tensor(v)
    )
    assert parse_scheme("hqq:w4g64").storage_bits((32, 640), 32) == stored * 8 == 32 * 640 * 4 + 320 * 32
    q = parse_scheme("quanto:w4").library_module(w).weight  # type: ignore[attr-defined]
    nbytes = q._data._data.numel() + q._scale.numel() * 2 + q._shift.numel() * 2
    assert parse_scheme("quanto:w4").storage_bits((32, 640), 32) == nbytes * 8 == 32 * 640 * 4 + 160 * 32


# -- keep-rules -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, kind", [("hqq:w4g64", "hqq"), ("quanto:w4g64", "quanto")])
def test_kept_rows_stay_and_the_rest_is_the_library_quantizing_the_compact_matrix(name, kind):
    w = _weights(12, 128)
    scheme = parse_scheme(f"{name}+keep-rows:0-3")
    out = scheme.fake_quantize(w)
    torch.testing.assert_close(out[:4], w[:4], rtol=0, atol=0)
    rest = _hqq_reference(w[4:], 4, 64) if kind == "hqq" else _quanto_reference(w[4:], 4, 64)
    torch.testing.assert_close(out[4:], rest, rtol=0, atol=0)
    assert scheme.storage_bits((12, 128), 32) == 4 * 128 * 32 + parse_scheme(name).storage_bits((8, 128), 32)


def test_outliers_and_plans_take_the_library_schemes():
    w = _weights(8, 128)
    out = parse_scheme("hqq:w4g64+outliers:1%").fake_quantize(w)
    assert out[0, 3] == w[0, 3].to(torch.float16).float()  # the largest weight is kept
    plan = Plan.parse("hqq:w4g64:layer:0; quanto:w8:*")
    assert [r.action for r in plan.rules] == ["hqq:w4g64", "quanto:w8"]


# -- bad input --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, message",
    [
        ("hqq:w7g64", "the hqq library does not quantize to 7 bits"),
        ("hqq:w4g60", "the hqq library refuses group size 60"),
        ("hqq:w4g64-noopt-noopt", "each option at most once"),
        ("quanto:w3", "optimum-quanto has no 3-bit integer weights"),
        ("quanto:w8g64", "optimum-quanto takes no group size for 8-bit weights"),
    ],
)
def test_options_the_library_refuses_are_one_line_and_exit_2(name, message, tmp_path, capsys):
    with pytest.raises(UserError, match=message):
        parse_scheme(name)
    out = tmp_path / "never"
    code, _, err = run_cli(["audit", "--scheme", name, "--out", str(out)], capsys)
    assert code == 2 and message in err and err.count("\n") == 1 and not out.exists()


def test_shapes_the_library_refuses_raise_one_line():
    with pytest.raises(UserError, match=r"quanto:w4g48 cannot quantize x.weight \(\[8, 64\]\): optimum-quanto"):
        parse_scheme("quanto:w4g48").check_shape((8, 64), "x.weight")
    # 5 groups of 64 cannot be packed two to a byte by the library
    with pytest.raises(UserError, match=r"hqq:w4g64 cannot quantize x.weight \(\[1, 320\]\): the hqq library"):
        parse_scheme("hqq:w4g64").check_shape((1, 320), "x.weight")
    parse_scheme("hqq:w4g64").check_shape((2, 320), "x.weight")  # 10 groups: fine


@pytest.mark.usefixtures("isolated_cache")
def test_a_shape_the_library_refuses_in_an_audit_writes_nothing(saved_model, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["audit", "--model", str(saved_model("gemma3")), "--langs", "eng", "--max-tokens", "40"]
    capsys.readouterr()
    code, _, err = run_cli([*argv, "--scheme", "quanto:w4g48", "--out", str(out)], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "optimum-quanto refuses it" in errors[0] and not out.exists()
    code, _, err = run_cli([*argv, "--scheme", "hqq:w4g32", "--n-boot", "50", "--out", str(out)], capsys)
    assert code == 0, err
    cost = json.loads((out / "audit.json").read_text())["scheme"]["cost"]
    # every tiny tensor fills its groups of 32: 4-bit codes + a float16 scale and zero per 32 weights
    assert cost["bits_per_quantized_weight"] == 4 + 32 / 32


@pytest.mark.parametrize(
    "name, module, extra", [("hqq:w4g64", "hqq", "hqq"), ("quanto:w4", "optimum.quanto", "quanto")]
)
def test_a_missing_extra_names_the_install_command(name, module, extra, monkeypatch, tmp_path, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == module else real_find_spec(n, *a))
    with pytest.raises(MissingExtra):
        parse_scheme(name)
    out = tmp_path / "never"
    code, _, err = run_cli(["audit", "--scheme", name, "--out", str(out)], capsys)
    assert code == 2 and f"pip install 'quant-disparity[{extra}]'" in err and err.count("\n") == 1
    assert not out.exists()


def test_the_scheme_listing_shows_a_missing_extra_instead_of_failing(monkeypatch, capsys):
    code, out, _ = run_cli(["schemes"], capsys)
    assert code == 0 and "hqq:w4g64" in out and "not installed" not in out
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "hqq" else real_find_spec(n, *a))
    code, out, _ = run_cli(["schemes"], capsys)
    assert code == 0 and "not installed" in " ".join(out.split()) and "quanto:w8" in out


# -- the library's own forward ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["hqq:w4g64", "quanto:w4", "quanto:w8"])
def test_each_library_layer_computes_with_our_dequantized_weight(name):
    """Layer by layer: the library's layer on random inputs vs a float64 product with our dequantized weight."""
    w, b = _weights(48, 128), torch.randn(48) * 0.1
    scheme = parse_scheme(name)
    layer = scheme.library_module(w, b)  # type: ignore[attr-defined]
    x = torch.randn(5, 128)
    with torch.no_grad():
        got = layer(x.to(torch.float16)).double()
    want = x.to(torch.float16).double() @ scheme.fake_quantize(w).double().T + b.to(torch.float16).double()
    assert (got - want).abs().max() <= 2e-2 * want.abs().max()  # float16 compute
    wrong = x.double() @ w.double().T + b.double()  # the unquantized weight: the check tells them apart
    assert (wrong - want).abs().max() > 10 * (got - want).abs().max()


def _tiny_setup(tiny_lm, arch):
    lm = tiny_lm(arch)
    mm = build_module_map(lm.model)
    corpus = load_udhr()
    langs = ("eng_Latn", "heb_Hebr", "amh_Ethi")
    docs = [d for lang in langs for d in corpus.documents(lang)[:5]]
    prep = prepare(docs, tokenize(lm.tokenizer, docs), 1, EvalSettings(window=64, context=8))
    return lm, mm, prep, langs


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("name", ["hqq:w4g64", "quanto:w4", "quanto:w8"])
def test_real_forward_agrees_with_our_evaluation_on_a_tiny_model(arch, name, tiny_lm):
    lm, mm, prep, langs = _tiny_setup(tiny_lm, arch)
    fw = Forward(lm.model)
    engine = QuantEngine(lm.model, mm)
    before = score_documents(fw, prep).nll
    assignment = {n: parse_scheme(name) for n in mm.default_targets()}
    result = real_vs_simulated(fw, engine, prep, assignment, langs, [5, 5, 5], n_boot=100)
    assert result["agree"] and result["library_layers"] == len(assignment)
    for row in result["languages"].values():
        assert abs(row["library_minus_ours_bpb"]["value"]) <= TOLERANCE_BPB
        assert row["bpb_library"] == pytest.approx(row["bpb_ours"] + row["library_minus_ours_bpb"]["value"])
    np.testing.assert_array_equal(score_documents(fw, prep).nll, before)  # the model is left as it was
    assert all(type(lm.model.get_submodule(mm[n].module)) is torch.nn.Linear for n in assignment)


def test_the_real_forward_check_tells_a_different_quantization_apart(tiny_lm):
    """The library layers of a 2-bit scheme against our evaluation of the 4-bit one: the documents' bits per byte
    differ far beyond the tolerance and the KL is orders of magnitude above that of the matching pair, so the
    agreement above is not a check that cannot fail."""
    lm, mm, prep, langs = _tiny_setup(tiny_lm, "llama")
    fw = Forward(lm.model)
    engine = QuantEngine(lm.model, mm)
    w4 = {n: parse_scheme("hqq:w4g64") for n in mm.default_targets()}
    matched = real_vs_simulated(fw, engine, prep, w4, langs, [5, 5, 5], n_boot=100)["languages"]
    layers = LibraryLayers(lm.model, mm, {n: parse_scheme("hqq:w2g16") for n in mm.default_targets()})
    try:
        s = score_documents(
            fw,
            prep,
            use_reference=lambda: (layers.remove(), engine.assign_(w4)),
            use_model=lambda: (engine.restore_(), layers.install()),
        )
    finally:
        layers.remove()
        engine.restore_()
    assert s.nll_ref is not None and s.kl is not None
    per_doc_bpb = np.abs(s.nll - s.nll_ref) / (np.log(2) * np.asarray(prep.n_bytes))
    assert per_doc_bpb.max() > 10 * TOLERANCE_BPB
    kl_bits = s.kl.sum() / s.n_pred.sum() / np.log(2)
    assert kl_bits > 1000 * max(row["kl_bits_library_from_ours"] for row in matched.values())


def test_the_real_forward_refuses_what_it_cannot_replace(tiny_lm):
    lm = tiny_lm("llama")
    mm = build_module_map(lm.model)
    target = mm.default_targets()[0]
    for scheme, message in [
        ("w4g64", "has no library forward"),
        ("hqq:w4g64+outliers:1%", "has no library forward"),
    ]:
        with pytest.raises(UserError, match=message):
            LibraryLayers(lm.model, mm, {target: parse_scheme(scheme)})
    embed = next(p.name for p in mm.params if "embed.token" in p.components)
    with pytest.raises(UserError, match="untied linear layers only"):
        LibraryLayers(lm.model, mm, {embed: parse_scheme("hqq:w4g64")})
