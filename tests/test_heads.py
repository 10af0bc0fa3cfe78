"""Attention heads and MLP neuron groups as units (locate) and as plan selectors, on every tiny architecture.

Nothing expected here comes from the code under test:

- which rows and columns belong to a head or a neuron is found *by behaviour*: perturb one row of a q/k/v (or
  fused qkv) matrix and see which heads' outputs (the o projection's input, cut into ``n_heads`` slices)
  change; perturb one row of gate/up/fc1 and see which of the down projection's input channels change;
- each configuration's numbers come from a separate float64 forward pass of an independent deep copy of the
  model whose tensors are fake-quantized here, by hand: the remaining rows and columns as one compact matrix
  (:func:`quant_disparity.quant.rtn.fake_quantize`, the bare tensor math), the kept elements put back;
- bit costs are counted by hand from the scheme's definition (codes + one float16 scale per group).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math

import numpy as np
import pytest
import torch
from conftest import ARCHS, run_cli, tiny_model

from quant_disparity.corpus import load_udhr
from quant_disparity.errors import UserError
from quant_disparity.evaluate import EvalSettings, Forward, prepare, tokenize
from quant_disparity.evaluate.sweep import sweep
from quant_disparity.locate import make_units, parse_unit, unit_config
from quant_disparity.models.modules import build_module_map
from quant_disparity.quant import QuantEngine, parse_scheme
from quant_disparity.quant.plan import Plan
from quant_disparity.quant.rtn import fake_quantize

BITS, GROUP = 3, 16
SCHEME = f"w{BITS}g{GROUP}"
LAYER = 1  # the block whose heads and neurons are examined
NEURONS = 32  # group size of the neuron units


class _Stop(Exception):
    pass


def _is_conv1d(module) -> bool:
    return type(module).__name__ == "Conv1D"


def _rows_view(model, name):
    """The parameter as [out, in] (GPT-2's Conv1D stores [in, out]): a view, so writes reach the model."""
    module = model.get_submodule(name.rsplit(".", 1)[0])
    p = model.get_parameter(name)
    return p.data.t() if _is_conv1d(module) else p.data


def _input_of(model, module_name, ids):
    """The input of a module in one forward pass (stopped right there)."""
    got = {}

    def hook(module, args):
        got["x"] = args[0].detach().clone()
        raise _Stop

    h = model.get_submodule(module_name).register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(ids)
    except _Stop:
        pass
    finally:
        h.remove()
    return got["x"].reshape(-1, got["x"].shape[-1])


def _changed_columns(model, tensor, reader, ids, both_signs=False):
    """For each row of ``tensor``: the input columns of module ``reader`` that change when that row changes
    (``both_signs``: perturbed both ways, so that a ReLU channel closed one way opens the other)."""
    base = _input_of(model, reader, ids)
    w = _rows_view(model, tensor)
    gen = torch.Generator().manual_seed(0)
    out = []
    for r in range(w.shape[0]):
        saved = w[r].clone()
        noise = torch.randn(w.shape[1], generator=gen) * 10 * (saved.abs().max() + 1)
        changed: set[int] = set()
        for sign in (1, -1) if both_signs else (1,):
            w[r] = saved + sign * noise
            diff = (_input_of(model, reader, ids) - base).abs().amax(0)
            changed |= {int(c) for c in torch.nonzero(diff > 1e-5 * (base.abs().max() + 1e-12))}
        w[r] = saved
        out.append(changed)
    return out


@functools.cache
def _behaviour(arch):
    """Units of block LAYER found by behaviour: {unit: {tensor: (rows, cols)}} with locate's unit names."""
    model = tiny_model(arch)
    mm = build_module_map(model)
    cfg = model.config
    n_heads = cfg.num_attention_heads
    mine = [p for p in mm.params if p.layer == LAYER and p.role == "matrix"]
    o = next(p for p in mine if p.component == "attn.o")
    down = next(p for p in mine if p.component == "mlp.down")
    o_in = o.shape[0] if o.transposed else o.shape[1]
    width = down.shape[0] if down.transposed else down.shape[1]
    hd = o_in // n_heads
    ids = (torch.arange(8) * 7 % cfg.vocab_size).reshape(1, 8) + 3
    units: dict[str, dict[str, tuple[set, set]]] = {}

    def add(unit, tensor, rows=(), cols=()):
        r, c = units.setdefault(unit, {}).setdefault(tensor, (set(), set()))
        r.update(rows)
        c.update(cols)

    for p in mine:
        if p.component in ("attn.q", "attn.k", "attn.v", "attn.qkv"):
            for r, cols in enumerate(_changed_columns(model, p.name, o.module, ids)):
                heads = sorted({c // hd for c in cols})
                assert heads, f"{arch}: row {r} of {p.name} changes no head"
                if len(heads) == 1:
                    add(f"L{LAYER}.h{heads[0]}", p.name, rows=[r])
                else:  # a key/value head shared by a run of query heads
                    g = len(heads)
                    assert heads == list(range(heads[0], heads[0] + g)) and heads[0] % g == 0, (arch, r, heads)
                    add(f"L{LAYER}.kv{heads[0] // g}", p.name, rows=[r])
        if p.component in ("mlp.gate", "mlp.up", "mlp.gate_up"):
            for r, cols in enumerate(_changed_columns(model, p.name, down.module, ids, both_signs=True)):
                assert len(cols) == 1, f"{arch}: row {r} of {p.name} reaches channels {sorted(cols)}"
                (c,) = cols
                start = c // NEURONS * NEURONS
                add(f"L{LAYER}.n{start}-{start + NEURONS - 1}", p.name, rows=[r])
    for h in range(n_heads):
        add(f"L{LAYER}.h{h}", o.name, cols=range(h * hd, (h + 1) * hd))
    for start in range(0, width, NEURONS):
        add(f"L{LAYER}.n{start}-{start + NEURONS - 1}", down.name, cols=range(start, start + NEURONS))
    return units


def _as_sets(unit):
    return {t: (set(r), set(c)) for t, r, c in unit.parts}


@pytest.mark.parametrize("arch", ARCHS)
def test_head_and_neuron_units_are_the_rows_and_columns_that_behave_so(arch):
    """locate's units (and the plan selectors) hold exactly the rows/columns found by perturbation."""
    seen = _behaviour(arch)
    mm = build_module_map(tiny_model(arch))
    universe = mm.default_targets()
    got = {u.name: u for u in make_units(mm, universe, "head") + make_units(mm, universe, f"neurons:{NEURONS}")}
    got = {k: u for k, u in got.items() if k.startswith(f"L{LAYER}.")}
    assert set(got) == set(seen)
    for name, unit in got.items():
        assert _as_sets(unit) == seen[name], f"{arch} {name}"
        n_elements = sum(len(r) * _shape(mm, t)[1] + len(c) * _shape(mm, t)[0] for t, (r, c) in seen[name].items())
        assert unit.n_params == n_elements
    shared = any(k.split(".")[1].startswith("kv") for k in seen)
    layout = mm.attention
    assert layout is not None and shared == (layout.n_kv_heads < layout.n_heads)
    # The plan selectors keep the same elements as the units.
    for name, plan in [(f"L{LAYER}.h1", f"keep:head:{LAYER}.1"), (f"L{LAYER}.n32-63", f"keep:neurons:{LAYER}:32-63")]:
        resolved = Plan.parse(f"{plan}; {SCHEME}:*").resolve(mm).assignment()
        kept = {t: (set(_idx(s.keep_rows)), set(_idx(s.keep_cols))) for t, s in resolved.items() if s.partial}
        assert kept == seen[name], f"{arch} {plan}"
    if shared:
        resolved = Plan.parse(f"keep:kvhead:{LAYER}.0; {SCHEME}:*").resolve(mm).assignment()
        kept = {t: (set(_idx(s.keep_rows)), set(_idx(s.keep_cols))) for t, s in resolved.items() if s.partial}
        assert kept == seen[f"L{LAYER}.kv0"]


def _idx(ranges):
    return [i for a, b in ranges for i in range(a, b)]


def _shape(mm, t):
    p = mm[t]
    return tuple(p.shape[::-1]) if p.transposed else tuple(p.shape)


# -- exactness against separate full passes -------------------------------------------------------------------------
def _hand_tensor(w2d, kept_rows, kept_cols, quantized_rows=None, quantized_cols=None):
    """``w2d`` with its remaining rows/columns quantized as one compact matrix and the rest as they were."""
    n_out, n_in = w2d.shape
    rows = [i for i in range(n_out) if i not in kept_rows] if quantized_rows is None else sorted(quantized_rows)
    cols = [j for j in range(n_in) if j not in kept_cols] if quantized_cols is None else sorted(quantized_cols)
    out = w2d.clone()
    if rows and cols:
        sub = w2d[rows][:, cols]
        q = fake_quantize(sub.contiguous(), BITS, group_size=GROUP)
        for a, i in enumerate(rows):
            out[i, cols] = q[a]
    return out


def _hand_model(lm, universe, unit_parts, mode):
    """An independent copy of the model holding the configuration, built tensor by tensor."""
    model = copy.deepcopy(lm.model)
    for t in universe:
        w = _rows_view(model, t)
        r, c = unit_parts.get(t, (set(), set()))
        if mode == "protect-one":
            new = _hand_tensor(w, r, c)
        elif t in unit_parts:  # quantize-only: the unit's rows (or columns), all of the other axis
            new = _hand_tensor(w, set(), set(), r or range(w.shape[0]), c or range(w.shape[1]))
        else:
            continue
        w.copy_(new)
    return model


def _full_pass(model, windows, n_docs):
    out = [[] for _ in range(n_docs)]
    with torch.no_grad():
        for w in windows:
            ids = torch.tensor([w.input_ids])
            lp = torch.log_softmax(model(ids).logits.double(), -1)[0]
            p0 = w.first_scored_position
            out[w.doc].append((lp[p0 : len(w.input_ids) - 1], ids[0, p0 + 1 :]))
    return out


def _nll_kl(ref, q, n):
    nll, kl = np.zeros(n), np.zeros(n)
    for d in range(n):
        for (lr, t), (lq, _) in zip(ref[d], q[d]):
            nll[d] -= lq.gather(1, t[:, None]).sum().item()
            kl[d] += (lr.exp() * (lr - lq)).sum().item()
    return nll, kl


@pytest.mark.parametrize("arch", ARCHS)
def test_head_and_neuron_configurations_equal_separate_full_passes(arch, tiny_lm):
    seen = _behaviour(arch)
    lm = tiny_lm(arch)
    mm = build_module_map(lm.model)
    universe = mm.default_targets()
    scheme = parse_scheme(SCHEME)
    chosen = [("protect-one", f"L{LAYER}.h1"), ("protect-one", f"L{LAYER}.n32-63"), ("quantize-only", f"L{LAYER}.h2")]
    chosen += [("quantize-only", f"L{LAYER}.n0-31")]
    if f"L{LAYER}.kv0" in seen:
        chosen += [("protect-one", f"L{LAYER}.kv0")]
    chosen += [("protect-one", f"L{LAYER}.h0+L{LAYER}.n0-31")]
    configs = {"all": {t: scheme for t in universe}}
    for mode, name in chosen:
        units = [parse_unit(u, mm, universe) for u in name.split("+")]
        configs[f"{mode}:{name}"] = unit_config(universe, units, scheme, mode, mm)

    c = load_udhr()
    # short documents keep thirteen architectures quick; two windows each still exercise the window context
    docs = [
        dataclasses.replace(d, text=d.text[:240]) for lang in ("eng_Latn", "heb_Hebr") for d in c.documents(lang)[:1]
    ]
    prep = prepare(
        docs, tokenize(lm.tokenizer, docs), lm.prefix_token_id, EvalSettings(window=48, context=8, batch_tokens=512)
    )
    got = sweep(Forward(lm.model), prep, QuantEngine(lm.model, mm), configs, bases=["all"], vocab_chunk=100)
    assert got.stats["replay"] and got.stats["block_work_saved"] > 0

    windows = [w for b in prep.batches for w in b]
    n = len(prep.docs)
    ref = _full_pass(copy.deepcopy(lm.model), windows, n)
    nll_ref, _ = _nll_kl(ref, ref, n)
    np.testing.assert_allclose(got.nll_ref, nll_ref, rtol=2e-5)
    for mode, name in [("protect-one", "all")] + chosen:
        parts: dict = {}
        for u in name.split("+") if name != "all" else []:
            for t, (r, cc) in seen[u].items():
                pr, pc = parts.setdefault(t, (set(), set()))
                pr.update(r)
                pc.update(cc)
        key = "all" if name == "all" else f"{mode}:{name}"
        nll, kl = _nll_kl(ref, _full_pass(_hand_model(lm, universe, parts, mode), windows, n), n)
        assert np.abs(nll - nll_ref).max() > 1e-4, f"{arch} {key}: the configuration changes nothing measurable"
        np.testing.assert_allclose(got.nll[key], nll, rtol=2e-5, err_msg=f"{arch} {key}: NLL")
        np.testing.assert_allclose(got.kl[key], kl, rtol=2e-3, atol=1e-6, err_msg=f"{arch} {key}: KL")


# -- honest bits ----------------------------------------------------------------------------------------------------
def _rtn_bits(n_out, n_in):
    return n_out * n_in * BITS + n_out * math.ceil(n_in / GROUP) * 16


@pytest.mark.parametrize("arch", ["llama", "gpt2", "phi3", "falcon"])
def test_partly_kept_tensors_cost_kept_elements_at_full_width_and_the_rest_at_the_scheme(arch):
    seen = _behaviour(arch)
    mm = build_module_map(tiny_model(arch))
    plan = Plan.parse(f"keep:head:{LAYER}.1; keep:neurons:{LAYER}:32-63; {SCHEME}:*").resolve(mm)
    parts: dict = {}
    for u in (f"L{LAYER}.h1", f"L{LAYER}.n32-63"):
        for t, (r, c) in seen[u].items():
            parts.setdefault(t, (set(), set()))[0].update(r)
            parts[t][1].update(c)
    expected, total, kept_total = 0.0, 0, 0
    for p in mm.params:
        n_out, n_in = _shape(mm, p.name) if len(p.shape) == 2 else (1, p.numel)
        total += p.numel
        if p.name not in mm.default_targets():
            expected += p.numel * p.bits  # left as it is
            continue
        r, c = parts.get(p.name, (set(), set()))
        kept = len(r) * n_in + len(c) * n_out - len(r) * len(c)
        kept_total += kept
        expected += kept * 32 + (_rtn_bits(n_out - len(r), n_in - len(c)) if kept < p.numel else 0)
    totals = plan.totals
    assert totals["bits_per_weight"] == pytest.approx(expected / total, rel=1e-12)
    assert totals["kept_elements_of_quantized_tensors"] == kept_total > 0
    # and the module map's cost of the same assignment agrees
    from quant_disparity.quant import cost

    assert cost(mm, plan.assignment())["bits_per_weight"] == pytest.approx(expected / total, rel=1e-12)


def test_scheme_names_with_kept_rows_and_columns_read_back():
    s = parse_scheme("w4g128+outliers:1%").with_kept(rows=[0, 1, 2, 9], cols=[5])
    assert s.name == "w4g128+outliers:1%+keep-rows:0-2.9+keep-cols:5"
    assert parse_scheme(s.name) == s


# -- bad input --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from conftest import tiny_tokenizer

    d = tmp_path_factory.mktemp("heads") / "llama"
    tiny_model("llama").save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


@pytest.mark.parametrize(
    "args,message",
    [
        (["locate", "--granularity", "neurons:48"], "48 does not divide the MLP width of layer 0 (128)"),
        (["locate", "--granularity", "neurons:0"], "neurons takes a group size"),
        (["locate", "--granularity", "neurons:some"], "neurons takes a group size"),
        (["locate", "--pairs", "L1.h4,L1.h0"], "names no head of this model"),
        (["locate", "--pairs", "L1.kv2,L1.h0"], "names no head of this model"),
        (["locate", "--pairs", "L1.n0-999,L1.h0"], "are not a range of this layer's MLP channels"),
        (["audit", "--plan", "keep:head:1.4; w4g16:*"], "head 4 is out of range"),
        (["audit", "--plan", "keep:kvhead:1.2; w4g16:*"], "key/value head 2 is out of range"),
        (["audit", "--plan", "keep:neurons:1:100-128; w4g16:*"], "neuron 128 of layer 1 is out of range"),
        (["audit", "--plan", "keep:neurons:1:9-3; w4g16:*"], "runs backwards"),
        (["audit", "--plan", "keep:head:3.0; w4g16:*"], "layer 3 is out of range"),
        (["audit", "--plan", "w4g16:head:1.0"], "belong in a keep rule"),
    ],
)
def test_bad_heads_and_neurons_are_one_line_exit_2_nothing_written(llama_dir, args, message, capsys, tmp_path):
    out = tmp_path / "o"
    code, _, err = run_cli([*args, "--model", str(llama_dir), "--langs", "eng", "--out", str(out)], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # (model loading draws progress)
    assert code == 2 and len(errors) == 1 and message in errors[0] and errors[0] == err.rstrip("\n").split("\n")[-1]
    assert not out.exists()


def test_heads_that_cannot_be_separated_are_named(tiny_lm):
    """A fused qkv matrix of a layout nobody described: refused, saying which tensor and why."""
    lm = tiny_lm("gpt2")
    lm.model.config.model_type = "mystery"
    mm = build_module_map(lm.model)
    assert mm.attention is None and "fused qkv" in mm.attention_note and "c_attn" in mm.attention_note
    with pytest.raises(UserError, match="cannot be separated .*mystery"):
        make_units(mm, mm.default_targets(), "head")
    with pytest.raises(UserError, match="cannot be separated"):
        Plan.parse("keep:head:1.0; w4g16:*").resolve(mm)
    assert make_units(mm, mm.default_targets(), f"neurons:{NEURONS}")  # neurons do not need heads


# -- plans: files, round trips, exports ------------------------------------------------------------------------------
def test_neuron_lists_from_a_file_are_read_into_the_plan(tmp_path):
    mm = build_module_map(tiny_model("llama"))
    f = tmp_path / "neurons.txt"
    f.write_text("# language-specific neurons\n1:32-63\n\n2:5  # one more\n", encoding="utf-8")
    from_file = Plan.parse(f"keep:neurons:@{f}; {SCHEME}:*")
    assert str(from_file) == f"keep:neurons:1:32-63,2:5; {SCHEME}:*"  # self-contained: the file is not needed again
    inline = Plan.parse(f"keep:neurons:1:32-63,2:5; {SCHEME}:*")
    assert from_file.resolve(mm).assignment() == inline.resolve(mm).assignment()
    assert Plan.from_toml(from_file.to_toml()) == from_file
    f.write_text("1:32-63\nthree:4\n", encoding="utf-8")
    with pytest.raises(UserError, match="entry 2 .*'three:4'.* is not LAYER:FIRST-LAST"):
        Plan.parse(f"keep:neurons:@{f}; {SCHEME}:*")
    with pytest.raises(UserError, match="not found"):
        Plan.parse(f"keep:neurons:@{tmp_path / 'missing.txt'}; {SCHEME}:*")


@pytest.mark.parametrize(
    "text", ["keep:head:1.0-1,2.3; w4g16:*", "keep:kvhead:-1.0; keep:head:1.1&component:attn.o; w4g16:*"]
)
def test_head_plans_round_trip_through_text_and_toml(text):
    plan = Plan.parse(text)
    assert Plan.parse(str(plan)) == plan and Plan.from_toml(plan.to_toml()) == plan


def test_every_export_target_refuses_partly_kept_tensors():
    from quant_disparity.export import TARGETS, export, resolve_export

    model = tiny_model("llama")
    mm = build_module_map(model)
    with pytest.raises(UserError, match=r"multiple of 32 elements; .*o_proj.weight \(the \[64, 48\] left after"):
        Plan.parse("keep:head:1.1; gguf:q4_0:*").resolve(mm)  # 16 of 64 columns kept: 48 left, not 32-blocks
    for scheme, heads in (("w4g16", "1.1"), ("w8-channel", "1.1"), ("gguf:q4_0", "1.0-1")):
        resolved = resolve_export(Plan.parse(f"keep:head:{heads}; {scheme}:*"), model, mm)
        for target in TARGETS.names():
            with pytest.raises(UserError, match="cannot be expressed"):
                export(resolved, target)
