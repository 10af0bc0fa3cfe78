"""Quantizer properties: error bounds per granularity, idempotence, ranges, exact restore, bit accounting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quant_disparity.errors import UserError
from quant_disparity.quant import QuantEngine, cost, parse_scheme
from quant_disparity.quant import rtn
from quant_disparity.models.modules import build_module_map

from conftest import tiny_model

shapes = st.tuples(st.integers(1, 40), st.integers(1, 300))
granularity = st.sampled_from([("group", 32), ("group", 128), ("group", 7), ("channel", None), ("tensor", None)])


def _weights(shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale


def _group_scale_bound(w, bits, group, per_tensor, symmetric):
    """Per-element bound scale/2 from the quantizer's own stored scales (broadcast back to elements)."""
    q = rtn.quantize(w, bits, group_size=group, per_tensor=per_tensor, symmetric=symmetric)
    s = q.scale.float().expand_as(q.codes.float()).reshape(w.shape[0], -1)[:, : w.shape[1]] if not per_tensor else (
        q.scale.float().reshape(1, 1).expand(w.shape))
    return s / 2


@settings(max_examples=60, deadline=None)
@given(shape=shapes, gran=granularity, bits=st.integers(2, 8), symmetric=st.booleans(), seed=st.integers(0, 10**6),
       scale=st.sampled_from([1e-3, 1.0, 50.0]))
def test_error_is_at_most_half_a_step(shape, gran, bits, symmetric, seed, scale):
    w = _weights(shape, seed, scale)
    group = gran[1] if gran[0] == "group" else None
    per_tensor = gran[0] == "tensor"
    deq = rtn.fake_quantize(w, bits, group_size=group, per_tensor=per_tensor, symmetric=symmetric)
    bound = _group_scale_bound(w, bits, group, per_tensor, symmetric)
    assert torch.all((deq - w).abs() <= bound * (1 + 1e-6))


@settings(max_examples=40, deadline=None)
@given(shape=shapes, gran=granularity, bits=st.integers(2, 8), symmetric=st.booleans(), seed=st.integers(0, 10**6))
def test_codes_stay_in_range_and_quantization_is_idempotent(shape, gran, bits, symmetric, seed):
    w = _weights(shape, seed)
    group = gran[1] if gran[0] == "group" else None
    per_tensor = gran[0] == "tensor"
    q = rtn.quantize(w, bits, group_size=group, per_tensor=per_tensor, symmetric=symmetric)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        assert q.codes.min() >= -qmax and q.codes.max() <= qmax
    else:
        assert q.codes.min() >= 0 and q.codes.max() <= 2**bits - 1
        assert q.zero.min() >= 0 and q.zero.max() <= 2**bits - 1
    once = rtn.dequantize(q)
    twice = rtn.fake_quantize(once, bits, group_size=group, per_tensor=per_tensor, symmetric=symmetric)
    if symmetric:  # the extreme code is always hit, so the grid is reproduced exactly
        assert torch.equal(once, twice)
    else:  # an integer zero point need not hit both extreme codes; re-quantizing stays within half a step
        assert torch.all((twice - once).abs() <= _group_scale_bound(w, bits, group, per_tensor, False) * (1 + 1e-6))


def test_chunked_equals_unchunked():
    w = _weights((300, 200), 1)
    for kw in (dict(group_size=64), dict(group_size=None), dict(per_tensor=True)):
        for sym in (True, False):
            a = rtn.fake_quantize(w, 4, symmetric=sym, chunk_elems=1000, **kw)
            b = rtn.dequantize(rtn.quantize(w, 4, symmetric=sym, **kw))
            assert torch.equal(a, b)


def test_asymmetric_uses_the_full_range_of_a_one_sided_tensor():
    w = _weights((16, 128), 2).abs() + 0.5  # all positive: symmetric wastes half the codes
    sym = rtn.fake_quantize(w, 4, group_size=128, symmetric=True)
    asym = rtn.fake_quantize(w, 4, group_size=128, symmetric=False)
    assert (asym - w).abs().mean() < 0.75 * (sym - w).abs().mean()


def test_per_tensor_symmetric_matches_the_original_logs_formula():
    w = _weights((64, 64), 3)
    exact = np.float32(w.abs().max() / 7)
    s16 = np.float16(exact)
    if np.float32(s16) < exact:  # stored scales round up (see rtn._store_scale)
        s16 = np.nextafter(s16, np.float16(np.inf))
    scale = float(s16)
    expected = torch.round(w / scale).clamp(-7, 7) * scale
    assert torch.equal(parse_scheme("w4-tensor").fake_quantize(w), expected)


def test_more_bits_less_error():
    w = _weights((64, 256), 4)
    errs = [(parse_scheme(f"w{b}g64").fake_quantize(w) - w).pow(2).mean().item() for b in range(2, 9)]
    assert all(a > b for a, b in zip(errs, errs[1:]))


def test_zero_group_stays_zero():
    w = torch.zeros(4, 64)
    w[0, :32] = 1.0
    out = rtn.fake_quantize(w, 4, group_size=32)
    assert torch.equal(out[1:], torch.zeros(3, 64)) and torch.equal(out[0, 32:], torch.zeros(32))


@pytest.mark.parametrize("name", ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"])
def test_gguf_types_are_bit_exact_with_the_gguf_package(name):
    from gguf import GGMLQuantizationType, quants

    w = _weights((8, 96), 5)
    qtype = GGMLQuantizationType[name.upper()]
    expected = quants.dequantize(quants.quantize(w.numpy(), qtype), qtype)
    ours = parse_scheme(f"gguf:{name}").fake_quantize(w)
    np.testing.assert_array_equal(ours.numpy(), expected)
    # and the error is what a b-bit block format allows (8-bit much better than 4-bit)
    assert (ours - w).abs().max() < (0.02 if name == "q8_0" else 0.6)


def test_gguf_rejects_rows_not_multiple_of_32():
    with pytest.raises(UserError, match="multiple of 32"):
        parse_scheme("gguf:q4_0").check_shape((4, 40), "x.weight")


@pytest.mark.parametrize("name,bits_per_weight", [
    ("w4g128", 4 + 16 / 128), ("w4g128-asym", 4 + 20 / 128), ("w8-channel", 8 + 16 / 2048),
    ("w4-tensor", 4 + 16 / 2048**2), ("gguf:q4_0", 4.5), ("gguf:q4_1", 5.0), ("gguf:q5_0", 5.5),
    ("gguf:q5_1", 6.0), ("gguf:q8_0", 8.5), ("fp16", 16.0), ("none", 32.0), ("w3g64", 3 + 16 / 64),
])
def test_storage_bits_per_weight(name, bits_per_weight):
    assert parse_scheme(name).storage_bits((2048, 2048), 32) / 2048**2 == pytest.approx(bits_per_weight, rel=1e-12)


@pytest.mark.parametrize("text", ["w4g128", "w4g128-asym", "w8-channel", "w4-tensor-asym", "gguf:q4_0", "fp16",
                                  "bf16", "none", "w2g16", "w8-channel-asym"])
def test_scheme_names_round_trip(text):
    s = parse_scheme(text)
    assert parse_scheme(s.name) == s and s.name == text


@pytest.mark.parametrize("text", ["w4", "w9g128", "w1g64", "w4g0", "q4_k", "int4", "", "w4-row"])
def test_bad_schemes_are_user_errors(text):
    with pytest.raises(UserError) as e:
        parse_scheme(text)
    assert "\n" not in str(e.value)


def test_engine_restores_bit_exactly_and_only_touches_changed_tensors():
    model = tiny_model("gpt2")
    mm = build_module_map(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine = QuantEngine(model, mm)
    targets = mm.default_targets()
    s4, s8 = parse_scheme("w4g32"), parse_scheme("w8-channel")
    m1 = engine.assign_({n: s4 for n in targets})
    assert m1.n_changed == len(targets)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert sorted(changed) == sorted(targets)  # Conv1D weights included, biases/norms/embeddings untouched
    m2 = engine.assign_({**{n: s4 for n in targets}, targets[0]: s8})
    assert list(m2.changed) == [targets[0]] and m2.changed[targets[0]] == ("w4g32", "w8-channel")
    assert engine.assign_({**{n: s4 for n in targets}, targets[0]: s8}).n_changed == 0
    engine.restore_()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_engine_caches_quantized_tensors():
    model = tiny_model("llama")
    mm = build_module_map(model)
    engine = QuantEngine(model, mm)
    name = mm.default_targets()[0]
    s = parse_scheme("w4g32")
    assert engine.quantized(name, s) is engine.quantized(name, s)


def test_conv1d_groups_run_along_the_input_dimension():
    model = tiny_model("gpt2")
    mm = build_module_map(model)
    info = next(p for p in mm.params if p.transposed)
    w = model.get_parameter(info.name).detach()
    engine = QuantEngine(model, mm)
    q = engine.quantized(info.name, parse_scheme("w4g32"))
    expected = rtn.fake_quantize(w.t(), 4, group_size=32).t()
    assert torch.equal(q, expected)


def test_cost_counts_kept_tensors_at_full_width():
    model = tiny_model("llama")
    mm = build_module_map(model)
    targets = mm.default_targets()
    c = cost(mm, {n: parse_scheme("w4g64") for n in targets})
    n_q = sum(mm[n].numel for n in targets)
    kept = mm.total_params - n_q
    assert c["quantized_params"] == n_q
    assert c["bits_per_quantized_weight"] == pytest.approx(4 + 16 / 64)
    assert c["bits_per_weight"] == pytest.approx((n_q * (4 + 16 / 64) + kept * 32) / mm.total_params)
