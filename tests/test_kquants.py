"""llama.cpp's K-quants (``gguf:q4_k`` ...) and recipes (``gguf:q4_k_m``) by llama.cpp's own quantizer.

Expected values come from elsewhere than the scheme code: a ctypes call to ``ggml_quantize_chunk`` written here,
the gguf package's independent numpy dequantizer and legacy-type quantizer, ``gguf.GGML_QUANT_SIZES``, and the
per-tensor types of the bundled Q4_K_M file that llama-quantize wrote.
"""

from __future__ import annotations

import ctypes
import re

import gguf
import numpy as np
import pytest
import torch
from conftest import run_cli, skip_unless_ci, tiny_model
from gguf import quants

from quant_disparity.errors import UserError
from quant_disparity.models.modules import build_module_map
from quant_disparity.quant import parse_scheme
from quant_disparity.quant.backends import ggml
from quant_disparity.quant.plan import Plan

K_TYPES = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")


@pytest.fixture(scope="module")
def libggml():
    try:
        path = ggml.library_path()
    except UserError as e:
        skip_unless_ci(f"libggml-base is not installed ({e.message})")
    return ctypes.CDLL(str(path))


def _direct(lib, name: str, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ggml_quantize_chunk called by hand (``imatrix``: per input channel), then the gguf package's numpy
    dequantizer."""
    qtype = gguf.GGMLQuantizationType[name.upper()]
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rows, n = x.shape
    dst = np.zeros((rows, n // block * type_size), dtype=np.uint8)
    src = np.ascontiguousarray(x, dtype=np.float32)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = (
        [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 3 + [ctypes.c_void_p]
    )
    imp = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    ptr = None if imp is None else imp.ctypes.data
    assert lib.ggml_quantize_chunk(int(qtype), src.ctypes.data, dst.ctypes.data, 0, rows, n, ptr) == dst.nbytes
    return quants.dequantize(dst, qtype).reshape(rows, n)


def _weights(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[1, 7] = 0.9  # an outlier in one super-block
    w[2, :256] = 0.0  # an all-zero super-block
    return w


@pytest.mark.parametrize("name", K_TYPES)
def test_k_types_are_llama_cpps_own_quantize_dequantize(libggml, name):
    w = _weights(8, 512)
    expected = _direct(libggml, name, w.numpy())
    ours = parse_scheme(f"gguf:{name}").fake_quantize(w)
    np.testing.assert_array_equal(ours.numpy(), expected)
    assert torch.equal(ours[2, :256], torch.zeros(256))  # a zero super-block stays zero
    # llama.cpp's to_float (what the scheme dequantizes with) and the gguf package's numpy code agree bit for bit
    raw = ggml.quantize(w.numpy(), name)
    np.testing.assert_array_equal(
        ggml.dequantize(raw, name, (8, 512)), quants.dequantize(raw, gguf.GGMLQuantizationType[name.upper()])
    )


def test_k_types_error_falls_with_bits(libggml):
    w = torch.randn(16, 1024, generator=torch.Generator().manual_seed(1))
    rel = [float((parse_scheme(f"gguf:{t}").fake_quantize(w) - w).norm() / w.norm()) for t in K_TYPES]
    assert rel == sorted(rel, reverse=True), rel
    assert 0.2 < rel[0] < 0.5 and rel[-1] < 0.02, rel  # 2-bit coarse, 6-bit close


@pytest.mark.parametrize(
    "name,fallback", [("q2_k", "q4_0"), ("q3_k", "q4_0"), ("q4_k", "q5_0"), ("q5_k", "q5_1"), ("q6_k", "q8_0")]
)
def test_rows_of_640_fall_back_as_llama_quantize_does(libggml, name, fallback):
    """640 = 2.5 super-blocks: llama.cpp stores the fallback type, which the gguf package quantizes independently."""
    w = _weights(6, 640)
    expected = quants.dequantize(
        quants.quantize(w.numpy(), gguf.GGMLQuantizationType[fallback.upper()]),
        gguf.GGMLQuantizationType[fallback.upper()],
    )
    np.testing.assert_array_equal(parse_scheme(f"gguf:{name}").fake_quantize(w).numpy(), expected)
    # and the direct call of the fallback type through libggml-base gives the same
    np.testing.assert_array_equal(_direct(libggml, fallback, w.numpy()), expected)


def test_rows_not_a_multiple_of_32_are_stored_as_f16(libggml):
    w = _weights(4, 48)
    w[0, 0] = 1 / 3
    out = parse_scheme("gguf:q4_k").fake_quantize(w)
    np.testing.assert_array_equal(out.numpy(), w.numpy().astype(np.float16).astype(np.float32))
    assert parse_scheme("gguf:q4_k").storage_bits((4, 48), 32) == 4 * 48 * 16


def test_storage_bits_follow_gguf_quant_sizes():
    # (block, bytes) from gguf.GGML_QUANT_SIZES: q4_k (256, 144), q6_k (256, 210), q5_0 (32, 22), q8_0 (32, 34)
    assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q4_K] == (256, 144)
    assert parse_scheme("gguf:q4_k").storage_bits((3, 512), 32) == 3 * 2 * 144 * 8  # 4.5 bits
    assert parse_scheme("gguf:q6_k").storage_bits((3, 512), 32) == 3 * 2 * 210 * 8  # 6.5625 bits
    assert parse_scheme("gguf:q4_k").storage_bits((3, 640), 32) == 3 * 20 * 22 * 8  # stored as q5_0: 5.5 bits
    assert parse_scheme("gguf:q6_k").storage_bits((3, 640), 32) == 3 * 20 * 34 * 8  # stored as q8_0: 8.5 bits
    for name, bits in (("q2_k", 2.625), ("q3_k", 3.4375), ("q5_k", 5.5)):
        assert parse_scheme(f"gguf:{name}").storage_bits((1, 2048), 32) == 2048 * bits


def test_plans_name_what_is_stored_and_count_it():
    """A tiny Llama (hidden 64, MLP 128): no row holds a super-block of 256, so every tensor falls back."""
    modmap = build_module_map(tiny_model("llama"))
    resolved = Plan.parse("keep:head:0.1; gguf:q6_k:*").resolve(modmap)
    by_name = {d.name: d for d in resolved.decisions}
    q = by_name["model.layers.0.self_attn.q_proj.weight"]
    assert q.action == "gguf:q6_k-as-q8_0+keep-rows:16-31"
    assert q.bits == 16 * 64 * 32 + 48 * 64 / 32 * 34 * 8  # kept rows at fp32, the rest q8_0
    # o keeps input columns 16-31: 48 columns are left, not a multiple of 32 -> f16
    o = by_name["model.layers.0.self_attn.o_proj.weight"]
    assert o.action == "gguf:q6_k-as-f16+keep-cols:16-31"
    assert o.bits == 64 * 16 * 32 + 64 * 48 * 16
    down = by_name["model.layers.1.mlp.down_proj.weight"]  # [64, 128]
    assert down.action == "gguf:q6_k-as-q8_0" and down.bits == 64 * 4 * 34 * 8
    assert parse_scheme(q.action).name == q.action  # the bound name reads back


def _gemma_270m_modmap():
    """Gemma 3 270M's module map on the meta device (FACTS.md's hyperparameters), no weights."""
    import transformers as T

    cfg = T.Gemma3TextConfig(
        vocab_size=262144,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = T.AutoModelForCausalLM.from_config(cfg)
    return build_module_map(model)


_GGUF_NAMES = {
    "attn_q": "attn.q",
    "attn_k": "attn.k",
    "attn_v": "attn.v",
    "attn_output": "attn.o",
    "ffn_gate": "mlp.gate",
    "ffn_up": "mlp.up",
    "ffn_down": "mlp.down",
}


@pytest.mark.integration
def test_q4_k_m_recipe_names_every_type_of_the_bundled_file(tmp_path):
    """The bundled GGUF is llama-quantize's Q4_K_M of Gemma 3 270M: the recipe gives each tensor its type."""
    from quant_disparity.models.bundled import BUNDLED

    reader = gguf.GGUFReader(BUNDLED.get("gemma-3-270m").gguf_path(tmp_path))
    real = {}
    for t in reader.tensors:
        if t.tensor_type in (gguf.GGMLQuantizationType.F32,):
            continue
        if t.name == "token_embd.weight":
            real[(None, "embed.token")] = (t.tensor_type.name.lower(), tuple(int(s) for s in t.shape))
            continue
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", t.name)
        assert m, t.name
        real[(int(m.group(1)), _GGUF_NAMES[m.group(2)])] = (t.tensor_type.name.lower(), tuple(int(s) for s in t.shape))
    modmap = _gemma_270m_modmap()
    resolved = Plan.parse("gguf:q4_k_m:all").resolve(modmap)
    ours = {}
    for d in resolved.decisions:
        if not d.quantized:
            continue
        p = modmap[d.name]
        scheme = resolved.assignment()[d.name]
        ours[(p.layer, p.component)] = (scheme.stored, tuple(reversed(p.shape)))  # GGUF lists ne[0] first
    assert len(real) == 18 * 7 + 1
    assert ours == real
    # the mixture of FACTS.md, spelled out: v and down get more bits on layers 0, 1, 4, 7, 10, 13, 15, 16, 17
    more = {0, 1, 4, 7, 10, 13, 15, 16, 17}
    assert {i for i in range(18) if real[(i, "attn.v")][0] == "q8_0"} == more
    assert {i for i in range(18) if real[(i, "mlp.down")][0] == "q6_k"} == more


def test_recipe_needs_a_tensor_and_unknown_k_types_are_errors():
    with pytest.raises(UserError, match="per-tensor recipe"):
        parse_scheme("gguf:q4_k_m").fake_quantize(torch.zeros(2, 256))
    with pytest.raises(UserError, match="unknown llama.cpp K-type 'q7_k'"):
        parse_scheme("gguf:q7_k")
    with pytest.raises(UserError, match="q4_k falls back to q5_0 or f16, not q8_0"):
        parse_scheme("gguf:q4_k-as-q8_0")


def test_missing_library_names_the_install_command(monkeypatch):
    import importlib.util

    monkeypatch.delenv(ggml.ENV, raising=False)
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llama_cpp" else real_find(n, *a))
    with pytest.raises(UserError) as e:
        ggml.library_path()
    assert "pip install 'quant-disparity[llamacpp]'" in e.value.hint
    monkeypatch.setenv(ggml.ENV, "/nonexistent/libggml-base.so")
    with pytest.raises(UserError, match="is not a file"):
        ggml.library_path()


def test_cli_unknown_k_type_is_one_line_exit_2(capsys, tmp_path):
    code, _out, err = run_cli(["audit", "--scheme", "gguf:q9_k", "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "unknown llama.cpp K-type 'q9_k'" in err
    assert not (tmp_path / "a").exists()


# -- real vs simulated: llama.cpp's own forward over a GGUF written here ---------------------------------------------
def _llama_cpp():
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        skip_unless_ci("llama-cpp-python is not installed (pip install 'quant-disparity[llamacpp]')")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's q/k row order for llama.cpp's rope (pairs interleaved)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_llama_gguf(model, tokenizer, path) -> None:
    """A float32 llama-architecture GGUF of a transformers Llama, as convert_hf_to_gguf.py lays it out."""
    import json

    cfg = model.config
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    tokens = tokenizer.convert_ids_to_tokens(list(range(cfg.vocab_size)))
    w.add_token_list(tokens)
    special = set(tokenizer.all_special_ids)
    w.add_token_types([3 if i in special else 1 for i in range(cfg.vocab_size)])
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([" ".join(m) for m in merges])
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    names = {"self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate"}
    names |= {"mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(cfg.num_hidden_layers):
        pre = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[pre + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[pre + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[pre + "self_attn.q_proj.weight"], cfg.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[pre + "self_attn.k_proj.weight"], cfg.num_key_value_heads))
        for hf, ours in names.items():
            w.add_tensor(f"blk.{i}.{ours}.weight", sd[pre + hf + ".weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _tiny_llama_256():
    """A tiny Llama whose rows (256 and 512) hold real K-quant super-blocks, with sharper predictions (weights x3)
    so that quantization changes them."""
    import transformers as T

    torch.manual_seed(0)
    cfg = T.LlamaConfig(
        vocab_size=320,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = T.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
    return model


def test_llama_cpp_runs_the_written_gguf_as_we_evaluate_it(tmp_path, tokenizer):
    """A tiny Llama (rows of 256 and 512: real K-quant blocks) as a float32 GGUF, and the same with v, o and the MLP
    in llama.cpp's q4_k bytes: llama.cpp's own per-document NLL matches our evaluation of the reference and of the
    dequantized weights, and the quantization's effect is the same on both sides."""
    _llama_cpp()

    from quant_disparity.corpus import CorpusSelection, load_udhr, select_documents
    from quant_disparity.evaluate import EvalSettings, prepare, tokenize
    from quant_disparity.evaluate.llamacpp import llamacpp_doc_nats, simulated_doc_nats
    from quant_disparity.models import wrap_model
    from quant_disparity.models.gguf_write import write_quantized_gguf

    model = _tiny_llama_256()
    lm = wrap_model(model, tokenizer, name="tiny-llama-256")
    modmap = build_module_map(model)
    template = tmp_path / "ref.gguf"
    _write_llama_gguf(model, tokenizer, template)
    resolved = Plan.parse("gguf:q4_k:component:attn.v,component:attn.o,component:mlp").resolve(modmap)
    assignment = resolved.assignment()
    assert {s.name for s in assignment.values()} == {"gguf:q4_k"}  # no fallback: these are real Q4_K tensors
    quantized = tmp_path / "q4_k.gguf"
    types = write_quantized_gguf(template, quantized, model, modmap, assignment)
    assert set(types.values()) == {"q4_k"} and len(types) == 2 * 5
    assert gguf.GGUFReader(quantized).tensors[0].name == "token_embd.weight"

    chosen = select_documents(
        load_udhr(),
        CorpusSelection(langs=("eng_Latn", "heb_Hebr", "amh_Ethi"), max_tokens=100),
        lambda docs: tokenize(tokenizer, docs),
    )
    settings = EvalSettings(window=64, context=16, batch_tokens=256)
    prepared = prepare(chosen.documents(), chosen.all_tokens(), lm.prefix_token_id, settings, 256)
    n_pred = np.asarray(prepared.n_pred, dtype=np.float64)
    ours_ref = simulated_doc_nats(lm, modmap, prepared, {}) / n_pred
    real_ref = llamacpp_doc_nats(template, prepared) / n_pred
    ours_q = simulated_doc_nats(lm, modmap, prepared, assignment) / n_pred
    real_q = llamacpp_doc_nats(quantized, prepared) / n_pred
    # llama.cpp's float32 kernels on float32 weights: the same numbers up to summation order (measured: 8e-5
    # nats per token at most)
    np.testing.assert_allclose(real_ref, ours_ref, rtol=0, atol=2e-4)
    # on q4_k weights llama.cpp's dot products quantize the activations to 8 bits (q8_K): close, not equal
    # (measured: 6e-3 nats per token at most)
    np.testing.assert_allclose(real_q, ours_q, rtol=0, atol=1e-2)
    # the quantization's effect over all documents is well above that noise, and the same on both sides
    w = n_pred / n_pred.sum()
    effect_ours, effect_real = float(w @ (ours_q - ours_ref)), float(w @ (real_q - real_ref))
    assert abs(effect_ours) > 2e-2, effect_ours
    assert abs(effect_real - effect_ours) < 0.25 * abs(effect_ours), (effect_ours, effect_real)


def _audit(model_dir, out, scheme: str, capsys):
    argv = ["audit", "--model", str(model_dir), "--langs", "eng,heb", "--max-tokens", "40", "--scheme", scheme]
    return run_cli([*argv, "--n-boot", "50", "--window", "64", "--out", str(out)], capsys)


def test_audit_records_what_each_tensor_stored(libggml, saved_model, isolated_cache, tmp_path, capsys):
    out = tmp_path / "q4k"
    code, _o, err = _audit(saved_model("llama"), out, "gguf:q4_k", capsys)
    assert code == 0, err
    import json

    scheme = json.loads((out / "audit.json").read_text())["scheme"]
    stored = scheme["stored_as"]  # hidden size 64, MLP 128: every tensor falls back to q5_0 (rows of 32)
    assert len(stored) == 3 * 7 and set(stored.values()) == {"gguf:q4_k-as-q5_0"}
    assert scheme["cost"]["bits_per_quantized_weight"] == pytest.approx(5.5)


def test_audit_without_the_library_is_one_line_exit_2(saved_model, isolated_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(ggml.ENV, str(tmp_path / "missing.so"))
    ggml._lib.cache_clear()
    out = tmp_path / "a"
    try:
        code, _o, err = _audit(saved_model("llama"), out, "gguf:q4_k", capsys)
    finally:
        ggml._lib.cache_clear()
    last = err.strip().splitlines()[-1]  # after the progress lines of loading, the one error line
    assert code == 2 and "is not a file" in last and "pip install 'quant-disparity[llamacpp]'" in last
    assert not out.exists()


def test_importance_weights_the_error_where_it_is_large(libggml):
    """ggml_quantize_chunk's importance matrix (per input channel, e.g. mean squared activations): channels
    marked important come out closer to their weights than without one, at the cost of the others."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 512)).astype(np.float32)
    important = np.zeros(512, dtype=bool)
    important[rng.choice(512, 64, replace=False)] = True
    imp = np.where(important, 100.0, 1.0).astype(np.float32)
    for name in ("q3_k", "q4_k"):
        plain = ggml.dequantize(ggml.quantize(x, name), name, x.shape) - x
        weighted = ggml.dequantize(ggml.quantize(x, name, importance=imp), name, x.shape) - x
        assert (weighted[:, important] ** 2).mean() < 0.8 * (plain[:, important] ** 2).mean()
        assert (weighted[:, ~important] ** 2).mean() > (plain[:, ~important] ** 2).mean()
    with pytest.raises(UserError, match="needs 512 values"):
        ggml.quantize(x, "q4_k", importance=imp[:100])


def test_a_gguf_written_by_the_k_quant_backend_audits_as_the_simulated_scheme(libggml, tokenizer, tmp_path, capsys):
    """An artifact written by a backend of this package: llama.cpp's Q4_K bytes of v, o and the MLP of a tiny Llama
    (rows of 256 and 512) put into a GGUF by ``write_quantized_gguf``. ``audit --quantized`` of that file and
    ``audit --plan`` of the same tensors under ``gguf:q4_k`` score the same documents with the same weights."""
    import json

    from quant_disparity.models.gguf_write import write_quantized_gguf

    model = _tiny_llama_256()
    ref_dir = tmp_path / "ref"
    model.save_pretrained(ref_dir)
    tokenizer.save_pretrained(ref_dir)
    template = tmp_path / "ref.gguf"
    _write_llama_gguf(model, tokenizer, template)
    plan = "gguf:q4_k:component:attn.v,component:attn.o,component:mlp"
    modmap = build_module_map(model)
    quantized = tmp_path / "q4_k.gguf"
    types = write_quantized_gguf(template, quantized, model, modmap, Plan.parse(plan).resolve(modmap).assignment())
    assert set(types.values()) == {"q4_k"} and len(types) == 10

    common = ["--model", str(ref_dir), "--langs", "eng,heb", "--max-tokens", "120", "--n-boot", "50"]
    common += ["--window", "64", "--split", "all"]
    code, _, err = run_cli(["audit", *common, "--quantized", str(quantized), "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    code, _, err = run_cli(["audit", *common, "--plan", plan, "--out", str(tmp_path / "s")], capsys)
    assert code == 0, err
    art = json.loads((tmp_path / "a" / "audit.json").read_text())
    sim = json.loads((tmp_path / "s" / "audit.json").read_text())
    assert art["scheme"]["artifact"]["differing_tensors"] == 10
    assert art["scheme"]["artifact"]["by_component"]["mlp.down"]["stored"] == {"q4_k": 2}
    for a, s in zip(art["languages"], sim["languages"], strict=True):
        assert a["lang"] == s["lang"]
        assert abs(s["delta_bpb"]["value"]) > 1e-3  # the quantization does something
        assert a["delta_bpb"]["value"] == pytest.approx(s["delta_bpb"]["value"], rel=1e-5, abs=1e-7)


def test_imatrix_scheme_is_llama_cpps_quantizer_with_the_mean_squared_activations(libggml):
    """gguf:q4_k-imatrix on calibration statistics = ggml_quantize_chunk called by hand with llama-imatrix's value
    per input channel (the mean of x² over the calibration rows, computed here from the rows in float64); it
    lowers the output error ‖(W - Q(W)) xᵀ‖ against plain q4_k; without calibration it is an error."""
    from quant_disparity.quant.site_stats import SiteStats

    rng = np.random.default_rng(5)
    w = torch.from_numpy(rng.standard_normal((16, 512)).astype(np.float32) * 0.05)
    scale = np.exp(rng.normal(0, 1.5, 512))  # channels of very different magnitude, as real activations have
    x = rng.standard_normal((300, 512)) * scale
    xt = torch.from_numpy(x)
    stats = SiteStats(xtx=xt.T @ xt, abs_sum=xt.abs().sum(0), rows=xt[:32].float(), n=300)
    scheme = parse_scheme("gguf:q4_k-imatrix")
    assert scheme.needs_calibration and scheme.name == "gguf:q4_k-imatrix"
    got = scheme.fake_quantize(w, stats).numpy()
    expected = _direct(libggml, "q4_k", w.numpy(), (x**2).mean(axis=0))
    np.testing.assert_array_equal(got, expected)
    plain = parse_scheme("gguf:q4_k").fake_quantize(w).numpy()
    assert not np.array_equal(got, plain)
    out_err = lambda q: float((((w.numpy() - q).astype(np.float64) @ x.T) ** 2).sum())
    assert out_err(got) < 0.9 * out_err(plain)
    with pytest.raises(UserError, match="needs calibration"):
        scheme.fake_quantize(w)
    # a recipe with an importance matrix gives each tensor its K-type with one
    recipe = parse_scheme("gguf:q4_k_m-imatrix")
    assert recipe.needs_calibration and recipe.name == "gguf:q4_k_m-imatrix"


def test_imatrix_audit_needs_calibration_and_records_it(libggml, saved_model, isolated_cache, tmp_path, capsys):
    model = saved_model("llama")
    code, _o, err = _audit(model, tmp_path / "no-cal", "gguf:q4_k-imatrix", capsys)
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("error")]
    assert code == 2 and len(lines) == 1 and "needs calibration" in lines[0]
    assert not (tmp_path / "no-cal").exists()
    out = tmp_path / "cal"
    argv = ["audit", "--model", str(model), "--langs", "eng,heb", "--max-tokens", "40", "--scheme"]
    argv += ["gguf:q4_k-imatrix", "--calibration", "eng", "--n-boot", "50", "--window", "64", "--out", str(out)]
    code, _o, err = run_cli(argv, capsys)
    assert code == 0, err
    import json

    r = json.loads((out / "audit.json").read_text())
    plain = tmp_path / "plain"
    code, _o, err = _audit(model, plain, "gguf:q4_k", capsys)
    assert code == 0, err
    p = json.loads((plain / "audit.json").read_text())
    assert r["scheme"]["calibration"]["source"] == "eng"
    assert [x["delta_bpb"]["value"] for x in r["languages"]] != [x["delta_bpb"]["value"] for x in p["languages"]]
