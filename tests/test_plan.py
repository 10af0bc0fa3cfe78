"""The plan language: parsing, round trips, precedence, resolution on tiny GPT-2 and Llama, bad plans."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from quant_disparity.errors import UserError
from quant_disparity.models.modules import build_module_map
from quant_disparity.quant import QuantEngine, parse_scheme
from quant_disparity.quant.plan import Plan, load_plan


@pytest.fixture(scope="module")
def gpt2():
    return build_module_map(tiny_model("gpt2"))


@pytest.fixture(scope="module")
def llama():
    return build_module_map(tiny_model("llama"))


def _actions(resolved):
    return {d.name: d.action for d in resolved.decisions}


@pytest.mark.parametrize(
    "text",
    [
        "keep:layer:0,layer:-1; w4g128:*",
        "keep:norms,biases; keep:outliers:0.5%; w4-tensor:all",
        "keep:layers:0,2&component:mlp; w4g32:*",
        "gguf:q4_0:*",
        "w4g32+outliers:1%:component:mlp",
        "keep:re:attn; w8-channel-asym:layers:even; w4g32:*",
    ],
)
def test_round_trips(text):
    p = Plan.parse(text)
    assert Plan.parse(str(p)) == p
    assert Plan.from_toml(p.to_toml()) == p
    assert Plan.from_dict(p.to_dict()) == p


def test_first_match_wins(gpt2):
    r = Plan.parse("keep:layer:0; w4g32:*").resolve(gpt2)
    a = _actions(r)
    for p in gpt2.params:
        if p.role == "matrix" and p.layer == 0:
            assert a[p.name] == "keep"
        elif p.role == "matrix" and p.layer is not None:
            assert a[p.name] == "w4g32"
        elif p.layer is None:
            assert a[p.name] == "none"  # no rule selects embeddings or the final norm
    # later rules only get what earlier ones left: layer 0 stays kept even though w8 also selects it
    r2 = Plan.parse("keep:layer:0&component:mlp; w8-channel:layer:0; w4g32:*").resolve(gpt2)
    a2 = _actions(r2)
    for p in gpt2.params:
        if p.layer == 0 and p.role == "matrix":
            assert a2[p.name] == ("keep" if p.component.startswith("mlp") else "w8-channel")


def test_selectors_resolve_to_the_intended_modules(gpt2, llama):
    def chosen(mm, sel):
        return {d.name for d in Plan.parse(f"w4g16:{sel}").resolve(mm).decisions if d.quantized}

    assert chosen(gpt2, "layer:-1") == {p.name for p in gpt2.params if p.layer == 2}
    assert chosen(gpt2, "layers:even") == {p.name for p in gpt2.params if p.layer in (0, 2)}
    assert chosen(gpt2, "layers:0-1") == {p.name for p in gpt2.params if p.layer in (0, 1)}
    assert chosen(gpt2, "component:attn.qkv") == {p.name for p in gpt2.params if "c_attn" in p.name}
    assert chosen(llama, "component:attn.qkv") == {
        p.name for p in llama.params if any(k in p.name for k in ("q_proj", "k_proj", "v_proj"))
    }
    assert chosen(gpt2, "component:mlp") == {p.name for p in gpt2.params if ".mlp." in p.name}
    assert chosen(gpt2, "biases") == {p.name for p in gpt2.params if p.name.endswith("bias")}
    assert chosen(gpt2, "norms") == {p.name for p in gpt2.params if ".ln_" in p.name}
    assert chosen(gpt2, "norm.final") == {"transformer.ln_f.weight", "transformer.ln_f.bias"}
    assert chosen(gpt2, "embed.pos") == {"transformer.wpe.weight"}
    assert chosen(gpt2, "lm_head") == chosen(gpt2, "embed.token") == {"transformer.wte.weight"}  # tied
    assert chosen(llama, "lm_head") == {"lm_head.weight"} and chosen(llama, "embed.token") == {
        "model.embed_tokens.weight"
    }
    assert chosen(llama, "re:down_proj") == {p.name for p in llama.params if "down_proj" in p.name}
    assert chosen(llama, "layer:1&component:mlp.gate") == {"model.layers.1.mlp.gate_proj.weight"}


# Every configuration of the original log (ORIGIN_CLAIMS.md C03-C13, C18) in the plan language, resolved on
# GPT-2 (the log's model) and a Llama: (plan, predicate on ParamInfo for the tensors that must be kept).
LOG_PLANS = {
    "C03 top 5% by magnitude kept": ("keep:outliers:5%; w4-tensor:all", None),
    "C04 MLP protected": ("keep:component:mlp; w4-tensor:all", lambda p: p.component.startswith("mlp")),
    "C04 attention protected": ("keep:component:attn; w4-tensor:all", lambda p: p.component.startswith("attn")),
    "C05 one layer's MLP": (
        "keep:layer:0&component:mlp; w4-tensor:all",
        lambda p: p.layer == 0 and p.component.startswith("mlp"),
    ),
    "C06 L0 + last": ("keep:layer:0,layer:-1; w4-tensor:all", lambda p: p.layer in (0, 2)),
    "C07 L1 + last": ("keep:layers:1,-1; w4-tensor:all", lambda p: p.layer in (1, 2)),
    "C08 even layers": ("keep:layers:even; w4-tensor:all", lambda p: p.layer in (0, 2)),
    "C08 odd layers": ("keep:layers:odd; w4-tensor:all", lambda p: p.layer == 1),
    "C09 L0 MLP up only": (
        "keep:layer:0&component:mlp.up; w4-tensor:all",
        lambda p: p.layer == 0 and p.component == "mlp.up",
    ),
    "C09 L0 MLP down only": (
        "keep:layer:0&component:mlp.down; w4-tensor:all",
        lambda p: p.layer == 0 and p.component == "mlp.down",
    ),
    "C10 token embedding": ("keep:embed.token; w4-tensor:all", lambda p: "embed.token" in p.components),
    "C11 norms": ("keep:norms; w4-tensor:all", lambda p: p.role == "norm"),
    "C12 biases": ("keep:biases; w4-tensor:all", lambda p: p.is_bias),
    "C18 L0+last+final norm+biases": (
        "keep:layer:0,layer:-1,norm.final,biases; w4-tensor:all",
        lambda p: p.layer in (0, 2) or p.is_bias or (p.role == "norm" and p.layer is None),
    ),
}


@pytest.mark.parametrize("key", list(LOG_PLANS))
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_every_log_configuration_is_expressible(key, arch, gpt2, llama):
    mm = gpt2 if arch == "gpt2" else llama
    text, kept = LOG_PLANS[key]
    if arch == "llama" and "biases" in text:
        with pytest.raises(UserError, match="matches no tensor"):  # Llama has no biases: said, not ignored
            Plan.parse(text).resolve(mm)
        return
    r = Plan.parse(text).resolve(mm)
    a = _actions(r)
    for p in mm.params:
        if kept is None:  # C03: everything quantized, with outliers kept inside each tensor
            assert a[p.name] == "w4-tensor+outliers:5%"
        else:
            assert (a[p.name] == "keep") == bool(kept(p)), (key, p.name, a[p.name])
            if not kept(p):
                assert a[p.name] == "w4-tensor"


def test_c05_per_layer_sweep_and_c10_position_embedding(gpt2):
    for layer in range(3):
        r = Plan.parse(f"keep:layer:{layer}&component:attn; w4-tensor:all").resolve(gpt2)
        kept = {d.name for d in r.decisions if d.action == "keep"}
        assert kept == {p.name for p in gpt2.params if p.layer == layer and p.component.startswith("attn")}
    r = Plan.parse("keep:embed.pos; w4-tensor:all").resolve(gpt2)
    assert {d.name for d in r.decisions if d.action == "keep"} == {"transformer.wpe.weight"}


def test_totals_count_outliers_scales_and_kept_tensors(gpt2):
    r = Plan.parse("keep:layer:0; w4g32+outliers:1%:*").resolve(gpt2)
    t = r.totals
    quant = [p for p in gpt2.params if p.role == "matrix" and p.layer in (1, 2)]
    kept = [p for p in gpt2.params if p.layer == 0]
    import math

    q_bits = sum(p.numel * 4 + p.numel / 32 * 16 + math.ceil(0.01 * p.numel) * 48 for p in quant)
    assert t["quantized_params"] == sum(p.numel for p in quant)
    assert t["kept_params"] == sum(p.numel for p in kept)
    assert t["protected_fraction"] == pytest.approx(t["kept_params"] / (t["kept_params"] + t["quantized_params"]))
    assert t["bits_per_quantized_weight"] == pytest.approx(q_bits / t["quantized_params"])
    others = gpt2.total_params - t["quantized_params"]
    assert t["bits_per_weight"] == pytest.approx((q_bits + 32 * others) / gpt2.total_params)


@pytest.mark.parametrize(
    "text,message",
    [
        ("keep:layer:7; w4g32:*", "layer 7 is out of range"),
        ("keep:layer:-4; w4g32:*", "layer -4 is out of range"),
        ("keep:component:mlpp; w4g32:*", "unknown component 'mlpp'"),
        ("w4g32:*; w8-channel:*", "is shadowed"),
        ("w4g32:*; keep:layer:0", "keeps nothing that a later rule would quantize"),
        ("keep:embed.pos; w4g32:*", "keeps nothing"),
        ("w4g32:layer:0; keep:outliers:1%&layer:2", "applies to no quantized tensor"),
        ("w4g32:outliers:1%", "belongs in a keep rule"),
        ("keep:outliers:200%; w4g32:*", "percentage"),
        ("keep layer 0", "expected ACTION:SELECTOR"),
        ("w5x:*", "unknown scheme"),
        ("keep:lyer:0; w4g32:*", "unknown selector 'lyer:0'"),
        ("keep:re:([; w4g32:*", "bad regular expression"),
        ("keep:layers:0,x; w4g32:*", "unknown selector 'x'"),
        ("", "empty plan"),
    ],
)
def test_bad_plans(gpt2, text, message):
    with pytest.raises(UserError, match=message) as e:
        Plan.parse(text).resolve(gpt2)
    assert "\n" not in str(e.value)


def test_bad_toml_plans(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text("[[rules]]\naction = 'keep'\n")
    with pytest.raises(UserError, match="needs exactly `action` and `select`"):
        load_plan(str(p))
    p.write_text("rules = [\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_plan(str(p))
    p.write_text("version = 1\n[[rules]]\naction = 'w4g32'\nselect = ['*']\n")
    assert str(load_plan(str(p))) == "w4g32:*"
    with pytest.raises(UserError, match="not found"):
        load_plan(str(tmp_path / "missing.toml"))


def test_plan_applies_through_the_engine(gpt2):
    model = tiny_model("gpt2")
    mm = build_module_map(model)
    r = Plan.parse("keep:layer:0; keep:outliers:1%; w4g32:*").resolve(mm)
    engine = QuantEngine(model, mm)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine.assign_(r.assignment())
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {d.name for d in r.decisions if d.quantized}
    name = next(iter(changed))
    w = before[name]
    q = model.state_dict()[name]
    k = max(1, round(0.01 * w.numel()))
    top = w.abs().flatten().topk(k).indices
    assert torch.equal(q.flatten()[top], w.flatten()[top].half().float())  # outliers kept in 16-bit
    assert parse_scheme(r.assignment()[name].name) == r.assignment()[name]
    engine.restore_()
