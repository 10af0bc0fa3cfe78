"""quant-disparity export: each target names exactly the modules the plan quantizes and keeps.

The expected sets come from walking the tiny model's named modules and applying the plan's rules by hand (not
from the plan resolver); where the target's library is installed, its own matching checks the export."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import torch
import yaml
from conftest import run_cli, skip_unless_ci, tiny_model

from quant_disparity.cli import main
from quant_disparity.errors import UserError
from quant_disparity.export import TARGETS, export, resolve_export
from quant_disparity.models.modules import build_module_map
from quant_disparity.quant.plan import Plan

PLAN = "keep:layer:0; w8g32:component:mlp.down; w4g64-asym:*"


def _need(module: str) -> None:
    """The export extra provides it (``make test`` installs it); CI must have it."""
    try:
        __import__(module)
    except ImportError:
        skip_unless_ci(f"{module} is not installed (pip install -e '.[export]')")


def _linear_names(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def _expected(model) -> dict[str, str | None]:
    """The plan above, applied by hand: every Linear in block 0 kept, down_proj of the others w8g32, the other
    block Linears w4g64-asym, everything outside the blocks (the LM head) untouched."""
    out: dict[str, str | None] = {}
    for name in _linear_names(model):
        m = re.fullmatch(r"model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)", name)
        if m is None or m.group(1) == "0":
            out[name] = None
        elif m.group(3) == "down_proj":
            out[name] = "w8g32"
        else:
            out[name] = "w4g64-asym"
    return out


@pytest.fixture(scope="module")
def llama():
    model = tiny_model("llama")
    return model, resolve_export(Plan.parse(PLAN), model, build_module_map(model))


def test_registry_has_the_five_targets():
    assert TARGETS.names() == ["llmcompressor", "gptqmodel", "transformers", "torchao", "llamacpp"]


def test_resolved_modules_match_the_hand_applied_plan(llama):
    model, resolved = llama
    got = {m.name: None if m.scheme is None else m.scheme.name for m in resolved.modules}
    assert got == _expected(model)
    assert len(got) == 3 * 7 + 1  # 7 projections per block and the head


def test_llmcompressor_recipe_targets_and_ignore(llama):
    model, resolved = llama
    recipe = yaml.safe_load(export(resolved, "llmcompressor"))
    mod = recipe["quant_stage"]["quant_modifiers"]["QuantizationModifier"]
    expected = _expected(model)
    assert sorted(mod["ignore"]) == sorted(n for n, s in expected.items() if s is None)
    by_args = {json.dumps(g["weights"], sort_keys=True): sorted(g["targets"]) for g in mod["config_groups"].values()}
    w8 = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "group", "group_size": 32}
    w4 = {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group", "group_size": 64}
    assert by_args == {
        json.dumps(w8, sort_keys=True): sorted(n for n, s in expected.items() if s == "w8g32"),
        json.dumps(w4, sort_keys=True): sorted(n for n, s in expected.items() if s == "w4g64-asym"),
    }


def test_llmcompressor_recipe_under_compressed_tensors_matching(llama):
    """compressed-tensors (llm-compressor's scheme and matching library) reads the groups and matches them."""
    _need("compressed_tensors")
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.utils.match import match_named_modules

    model, resolved = llama
    mod = yaml.safe_load(export(resolved, "llmcompressor"))["quant_stage"]["quant_modifiers"]["QuantizationModifier"]
    expected = _expected(model)
    seen: dict[str, str] = {}
    for group in mod["config_groups"].values():
        args = QuantizationArgs(**group["weights"])  # validates the arguments
        label = f"w{args.num_bits}g{args.group_size}{'' if args.symmetric else '-asym'}"
        for name, _ in match_named_modules(model, group["targets"], mod["ignore"]):
            assert name not in seen
            seen[name] = label
    assert seen == {n: s for n, s in expected.items() if s is not None}


def _gptq_effective(cfg: dict, name: str) -> dict | None:
    """GPTQModel's documented rule (as vLLM's get_dynamic_override applies it): the first key whose regex
    re.match-es the module name decides; -: skips, +: or no prefix overrides the base."""
    for key, override in cfg["dynamic"].items():
        if key.startswith("-:"):
            if re.match(key[2:], name):
                return None
        elif re.match(key.removeprefix("+:"), name):
            return {k: override.get(k, cfg[k]) for k in ("bits", "group_size", "sym")}
    return {k: cfg[k] for k in ("bits", "group_size", "sym")}


def test_gptqmodel_dynamic_rules(llama):
    model, resolved = llama
    cfg = json.loads(export(resolved, "gptqmodel"))
    expected = _expected(model)
    want = {
        "w8g32": {"bits": 8, "group_size": 32, "sym": True},
        "w4g64-asym": {"bits": 4, "group_size": 64, "sym": False},
    }
    for name, scheme in expected.items():
        if name == "lm_head":
            assert cfg["lm_head"] is False and scheme is None
            continue
        assert _gptq_effective(cfg, name) == (None if scheme is None else want[scheme]), name
    assert (cfg["bits"], cfg["group_size"], cfg["sym"]) == (4, 64, False)  # the most common scheme is the base


def test_transformers_bitsandbytes_skip_modules():
    from transformers import BitsAndBytesConfig
    from transformers.quantizers.quantizers_utils import should_convert_module

    model = tiny_model("llama")
    resolved = resolve_export(
        Plan.parse("keep:layer:-1,component:attn.q; w8-channel:*"), model, build_module_map(model)
    )
    cfg = json.loads(export(resolved, "transformers"))
    bnb = BitsAndBytesConfig.from_dict(cfg)
    assert bnb.load_in_8bit
    converted = {n for n in _linear_names(model) if should_convert_module(n, bnb.llm_int8_skip_modules)}
    by_hand = {
        n for n in _linear_names(model) if re.fullmatch(r"model\.layers\.[01]\.(self_attn\.[kvo]_proj|mlp\.\w+)", n)
    }
    assert converted == by_hand


def test_torchao_fqn_map_names_the_plan(llama):
    model, resolved = llama
    data = json.loads(export(resolved, "torchao"))
    want = {
        "w8g32": {"weight_dtype": "int8", "granularity": {"PerGroup": {"group_size": 32}}, "mapping_type": "SYMMETRIC"},
        "w4g64-asym": {
            "weight_dtype": "int4",
            "granularity": {"PerGroup": {"group_size": 64}},
            "mapping_type": "ASYMMETRIC",
        },
    }
    expected = _expected(model)
    assert data == {n: None if s is None else {"IntxWeightOnlyConfig": want[s]} for n, s in expected.items()}


def _unescape(regex: str) -> str:
    assert regex.startswith("^") and regex.endswith("$")
    return re.sub(r"\\(.)", r"\1", regex[1:-1])


def test_llamacpp_tensor_types_use_gguf_names():
    model = tiny_model("llama")
    plan = Plan.parse("keep:layer:0; gguf:q8_0:component:mlp.down; gguf:q4_0:*")
    resolved = resolve_export(plan, model, build_module_map(model))
    args = shlex.split(export(resolved, "llamacpp").split("\n", 1)[1].replace("\\\n", " "))
    assert args[0] == "llama-quantize" and args[-1] == "q4_0"
    pairs = dict(args[i + 1].rsplit("=", 1) for i, a in enumerate(args) if a == "--tensor-type")
    types = {_unescape(k): v for k, v in pairs.items()}
    gguf_of = {
        "q_proj": "attn_q",
        "k_proj": "attn_k",
        "v_proj": "attn_v",
        "o_proj": "attn_output",
        "gate_proj": "ffn_gate",
        "up_proj": "ffn_up",
        "down_proj": "ffn_down",
    }
    expected = {"token_embd.weight": "f32", "output_norm.weight": "f32", "output.weight": "f32"}
    for i in range(3):
        expected[f"blk.{i}.attn_norm.weight"] = "f32"
        expected[f"blk.{i}.ffn_norm.weight"] = "f32"
        for hf, g in gguf_of.items():
            expected[f"blk.{i}.{g}.weight"] = "f32" if i == 0 else "q8_0" if hf == "down_proj" else "q4_0"
    assert types == expected
    for k in pairs:  # each regex matches its own tensor name and no other
        assert [n for n in expected if re.search(k, n)] == [_unescape(k)]


@pytest.mark.parametrize(
    ("target", "plan", "words"),
    [
        ("transformers", "w4g128:*", ["transformers", "w4g128"]),
        ("llamacpp", "w4g64:*", ["llamacpp", "w4g64"]),
        ("gptqmodel", "w4-tensor:*", ["gptqmodel", "w4-tensor"]),
        ("gptqmodel", "w5g32:*", ["gptqmodel", "w5g32"]),
        ("llmcompressor", "gguf:q4_0:*", ["llmcompressor", "gguf:q4_0"]),
        ("torchao", "w4g32+outliers:1%:*", ["torchao", "w4g32+outliers:1%"]),
        ("torchao", "w4g32:norms", ["torchao", "w4g32", "norm"]),
    ],
)
def test_inexpressible_scheme_is_an_error(target, plan, words):
    model = tiny_model("llama")
    resolved = resolve_export(Plan.parse(plan), model, build_module_map(model))
    with pytest.raises(UserError) as e:
        export(resolved, target)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_cli_exports_and_refuses_bad_input(saved_model, tmp_path, capsys):
    d = str(saved_model("llama"))
    out = tmp_path / "r.yaml"
    main(["export", PLAN, "--model", d, "--to", "llmcompressor", "--out", str(out)])
    assert "QuantizationModifier" in out.read_text()
    before = out.read_text()
    code, _, err = run_cli(["export", PLAN, "--model", d, "--to", "llmcompressor", "--out", str(out)], capsys)
    assert code == 2 and "already exists" in err and out.read_text() == before
    code, _, err = run_cli(["export", PLAN, "--model", d, "--to", "llmcompresor"], capsys)
    assert code == 2 and "unknown export target" in err and "llmcompressor" in err
    code, _, err = run_cli(["export", "w4g128:*", "--model", d, "--to", "transformers"], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "transformers" in errors[0] and "w4g128" in errors[0]
