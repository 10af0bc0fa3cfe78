"""Quantizer properties: error bounds per granularity, idempotence, ranges, exact restore, bit accounting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from quant_disparity.errors import UserError
from quant_disparity.models.modules import build_module_map
from quant_disparity.quant import QuantEngine, cost, parse_scheme, rtn

shapes = st.tuples(st.integers(1, 40), st.integers(1, 300))
granularity = st.sampled_from([("group", 32), ("group", 128), ("group", 7), ("channel", None), ("tensor", None)])


def _weights(shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale


def _group_scale_bound(w, bits, group, per_tensor, symmetric):
    """Per-element bound scale/2 from the quantizer's own stored scales (broadcast back to elements)."""
    q = rtn.quantize(w, bits, group_size=group, per_tensor=per_tensor, symmetric=symmetric)
    s = (
        q.scale.float().expand_as(q.codes.float()).reshape(w.shape[0], -1)[:, : w.shape[1]]
        if not per_tensor
        else (q.scale.float().reshape(1, 1).expand(w.shape))
    )
    return s / 2


@settings(max_examples=60, deadline=None)
@given(
    shape=shapes,
    gran=granularity,
    bits=st.integers(2, 8),
    symmetric=st.booleans(),
    seed=st.integers(0, 10**6),
    scale=st.sampled_from([1e-3, 1.0, 50.0]),
)
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


# -- llama.cpp legacy block formats, written out from ggml-quants.c (quantize_row_*_ref, dequantize_row_*) ---------
# A block is 32 consecutive weights of a row. Layouts (little-endian): q4_0 = fp16 d + 16 bytes of nibbles;
# q4_1 = fp16 d, fp16 m + 16 bytes; q5_0 = fp16 d + uint32 qh (the 5th bits) + 16 bytes; q5_1 = fp16 d, fp16 m,
# uint32 qh + 16 bytes; q8_0 = fp16 d + 32 int8. Byte j of the nibbles holds weight j (low) and j + 16 (high).
# Values: q4_0 d*(q-8), q4_1 d*q+m, q5_0 d*(q-16), q5_1 d*q+m, q8_0 d*q. All arithmetic below is float32, as in C.
F32 = np.float32


def _fp16_bytes(x) -> bytes:
    return np.float16(x).tobytes()  # GGML_FP32_TO_FP16: round to nearest even


def _trunc_i8(x) -> int:
    return int(np.trunc(x))  # a C cast (int8_t)/(uint8_t) of a float: towards zero


def _ref_quantize_block(name: str, x: np.ndarray) -> bytes:
    assert x.dtype == np.float32 and x.shape == (32,)
    if name in ("q4_0", "q5_0"):
        amax, vmax = F32(0), F32(0)
        for v in x:  # the first element of largest magnitude, with its sign
            if amax < abs(v):
                amax, vmax = abs(v), v
        d = F32(vmax / F32(-8 if name == "q4_0" else -16))
        inv = F32(F32(1) / d) if d else F32(0)
        top, off = (15, F32(8.5)) if name == "q4_0" else (31, F32(16.5))
        q = [min(top, _trunc_i8(F32(F32(v * inv) + off))) for v in x]
        head = _fp16_bytes(d)
    elif name in ("q4_1", "q5_1"):
        lo, hi = x.min(), x.max()
        d = F32(F32(hi - lo) / F32(15 if name == "q4_1" else 31))
        inv = F32(F32(1) / d) if d else F32(0)
        q = [_trunc_i8(F32(F32(F32(v - lo) * inv) + F32(0.5))) for v in x]
        if name == "q4_1":
            q = [min(15, c) for c in q]
        head = _fp16_bytes(d) + _fp16_bytes(lo)
    elif name == "q8_0":
        d = F32(np.abs(x).max() / F32(127))
        inv = F32(F32(1) / d) if d else F32(0)
        # roundf: half away from zero (|v| + 0.5 is exact in float64)
        q = [int(np.copysign(np.floor(abs(float(F32(v * inv))) + 0.5), float(v))) for v in x]
        return _fp16_bytes(d) + bytes(c & 0xFF for c in q)
    else:
        raise AssertionError(name)
    nibbles = bytes((q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4) for j in range(16))
    if name in ("q4_0", "q4_1"):
        return head + nibbles
    qh = sum(((c >> 4) & 1) << j for j, c in enumerate(q))
    return head + qh.to_bytes(4, "little") + nibbles


def _ref_dequantize_block(name: str, raw: bytes) -> np.ndarray:
    d = F32(np.frombuffer(raw[0:2], np.float16)[0])
    if name == "q8_0":
        assert len(raw) == 34
        return np.array([F32(F32(c) * d) for c in np.frombuffer(raw[2:], np.int8)], dtype=np.float32)
    pos = 2
    m = None
    if name in ("q4_1", "q5_1"):
        m = F32(np.frombuffer(raw[2:4], np.float16)[0])
        pos = 4
    qh = 0
    if name in ("q5_0", "q5_1"):
        qh = int.from_bytes(raw[pos : pos + 4], "little")
        pos += 4
    nib = raw[pos:]
    assert len(nib) == 16
    q = [nib[j] & 0x0F for j in range(16)] + [nib[j] >> 4 for j in range(16)]
    q = [c | (((qh >> j) & 1) << 4) for j, c in enumerate(q)]
    if m is None:
        off = 8 if name == "q4_0" else 16
        return np.array([F32(F32(c - off) * d) for c in q], dtype=np.float32)
    return np.array([F32(F32(F32(c) * d) + m) for c in q], dtype=np.float32)


def _ref_roundtrip(name: str, w: np.ndarray) -> np.ndarray:
    rows = []
    for row in w:
        rows.append(
            np.concatenate(
                [
                    _ref_dequantize_block(name, _ref_quantize_block(name, row[b : b + 32]))
                    for b in range(0, len(row), 32)
                ]
            )
        )
    return np.stack(rows)


def _gguf_test_weights() -> torch.Tensor:
    w = _weights((8, 96), 5)
    w[0, :32] = 0.0  # a zero block (d = 0, id = 0)
    w[0, 32:64] = 0.25  # a constant block (q4_1/q5_1: max = min)
    w[1, 0] = -4.0  # the block's extreme is negative
    w[1, 40] = 3.0  # ... positive
    w[2, 64:96] = w[2, 64:96].abs() + 1.0  # one-sided
    w[3] *= 1e-3
    return w


#: Hand-made blocks and what llama.cpp decodes them to (worked out on paper from the layout above).
_Q4_0_BLOCK = _fp16_bytes(0.5) + bytes((2 * j) | ((2 * j + 1) << 4) for j in range(8)) + bytes([0x88] * 8)
_Q4_0_VALUES = [0.5 * (2 * j - 8) for j in range(8)] + [0.0] * 8 + [0.5 * (2 * j + 1 - 8) for j in range(8)] + [0.0] * 8
_Q8_0_BLOCK = _fp16_bytes(0.25) + bytes(c & 0xFF for c in [127, -127, 0, 1, -1, 64, -64, 100] * 4)
_Q8_0_VALUES = [0.25 * c for c in [127, -127, 0, 1, -1, 64, -64, 100] * 4]


def test_reference_block_decoder_on_hand_made_blocks():
    assert _Q4_0_BLOCK[:2] == b"\x00\x38"  # fp16 0.5, little-endian
    assert _ref_dequantize_block("q4_0", _Q4_0_BLOCK).tolist() == _Q4_0_VALUES
    assert _ref_dequantize_block("q8_0", _Q8_0_BLOCK).tolist() == _Q8_0_VALUES
    # and the encoder gives those bytes back (the q4_0 block's extreme, -4 = d * (0 - 8), sets d = 0.5)
    assert _ref_quantize_block("q4_0", np.array(_Q4_0_VALUES, dtype=np.float32)) == _Q4_0_BLOCK
    assert _ref_quantize_block("q8_0", np.array(_Q8_0_VALUES, dtype=np.float32)) == _Q8_0_BLOCK


def test_gguf_q4_0_and_q8_0_reproduce_hand_made_blocks_exactly():
    """Weights that are exactly a block's decoded values are on the grid: quantizing them changes nothing."""
    for name, values in (("q4_0", _Q4_0_VALUES), ("q8_0", _Q8_0_VALUES)):
        w = torch.tensor([values, values[::-1]], dtype=torch.float32)
        np.testing.assert_array_equal(parse_scheme(f"gguf:{name}").fake_quantize(w).numpy(), w.numpy())


@pytest.mark.parametrize("name", ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"])
def test_gguf_types_follow_the_llama_cpp_block_formulas(name):
    w = _gguf_test_weights()
    expected = _ref_roundtrip(name, w.numpy())
    ours = parse_scheme(f"gguf:{name}").fake_quantize(w)
    np.testing.assert_array_equal(ours.numpy(), expected)
    assert torch.equal(ours[0, :32], torch.zeros(32))  # a zero block stays zero
    # and the error is what a b-bit block format allows (8-bit much better than 4-bit)
    assert (ours - w).abs().max() < (0.02 if name == "q8_0" else 0.6)


def test_gguf_rejects_rows_not_multiple_of_32():
    with pytest.raises(UserError, match="multiple of 32"):
        parse_scheme("gguf:q4_0").check_shape((4, 40), "x.weight")


@pytest.mark.parametrize(
    "name,bits_per_weight",
    [
        ("w4g128", 4 + 16 / 128),
        ("w4g128-asym", 4 + 20 / 128),
        ("w8-channel", 8 + 16 / 2048),
        ("w4-tensor", 4 + 16 / 2048**2),
        ("gguf:q4_0", 4.5),
        ("gguf:q4_1", 5.0),
        ("gguf:q5_0", 5.5),
        ("gguf:q5_1", 6.0),
        ("gguf:q8_0", 8.5),
        ("fp16", 16.0),
        ("none", 32.0),
        ("w3g64", 3 + 16 / 64),
    ],
)
def test_storage_bits_per_weight(name, bits_per_weight):
    assert parse_scheme(name).storage_bits((2048, 2048), 32) / 2048**2 == pytest.approx(bits_per_weight, rel=1e-12)


@pytest.mark.parametrize(
    "text",
    [
        "w4g128",
        "w4g128-asym",
        "w8-channel",
        "w4-tensor-asym",
        "gguf:q4_0",
        "fp16",
        "bf16",
        "none",
        "w2g16",
        "w8-channel-asym",
    ],
)
def test_scheme_names_round_trip(text):
    s = parse_scheme(text)
    assert parse_scheme(s.name) == s and s.name == text


@pytest.mark.parametrize("text", ["w4", "w9g128", "w1g64", "w4g0", "q4_k_s", "q7_k", "int4", "", "w4-row"])
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
