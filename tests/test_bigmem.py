"""Models in their own dtype end to end, and the quantization engine's lean memory mode (originals re-read from
the checkpoint file, nothing cached): restores are bit-exact, lean and fast modes agree exactly, and a
bfloat16 audit's bits per byte agree with a float64 reference within bfloat16's rounding."""

from __future__ import annotations

import pytest
import torch
from golden import reference as ref

from quant_disparity.audit import run_audit
from quant_disparity.config import AuditConfig
from quant_disparity.corpus import load_udhr
from quant_disparity.errors import UserError
from quant_disparity.evaluate import EvalSettings
from quant_disparity.evaluate.batching import prepare
from quant_disparity.evaluate.forward import Forward
from quant_disparity.evaluate.sweep import sweep
from quant_disparity.models import load_model
from quant_disparity.models.modules import build_module_map
from quant_disparity.quant import engine_for, parse_scheme
from quant_disparity.quant.engine import MEMORY_ENV, memory_mode

pytestmark = [pytest.mark.usefixtures("isolated_cache"), pytest.mark.filterwarnings("ignore:.*too few documents")]

#: bfloat16 keeps 8 significant bits (relative rounding 2^-9 per weight and operation), float16 11 (2^-12); summed
#: over a language's tokens the errors largely cancel. Measured on the tiny Llama: bf16 within 1.1e-4 of the
#: float64 bits per byte, fp16 within 1.3e-5; the tolerances leave a margin of about 40x.
BF16_BPB_RTOL = 5e-3
FP16_BPB_RTOL = 5e-4


def _bits(model: torch.nn.Module) -> dict[str, bytes]:
    return {n: p.detach().reshape(-1).view(torch.uint8).numpy().tobytes() for n, p in model.named_parameters()}


def _configs(modmap, n_layers: int):
    w2, w4 = parse_scheme("w2g16"), parse_scheme("w4g32")
    linear = [p.name for p in modmap.params if p.role == "matrix" and p.layer is not None]
    configs = {"all-w4": {n: w4 for n in linear}, "all-w2": {n: w2 for n in linear}}
    for k in range(n_layers):
        configs[f"L{k}-w2"] = {n: w2 for n in linear if modmap[n].layer == k}
    return configs


def _prepared(lm, langs=("eng", "heb"), max_tokens=150):
    from quant_disparity.corpus import CorpusSelection, select_documents
    from quant_disparity.evaluate import tokenize

    sel = select_documents(
        load_udhr(), CorpusSelection(langs=langs, max_tokens=max_tokens), lambda t: tokenize(lm.tokenizer, t)
    )
    tokens = [t for lang in sel.langs for t in sel.tokens[lang]]
    return prepare(sel.documents(), tokens, lm.prefix_token_id, EvalSettings(window=64, context=16, batch_tokens=512))


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_lean_sweep_restores_every_parameter_bit_for_bit_in_bf16(saved_model, arch):
    lm = load_model(str(saved_model(arch)), dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in lm.model.parameters())
    assert lm.checkpoint is not None
    modmap = build_module_map(lm.model)
    before = _bits(lm.model)
    lean = engine_for(lm, modmap, "lean")
    assert lean.mode == "lean" and lean.file_backed == len(modmap.params)  # every original is in the file
    configs = _configs(modmap, modmap.n_layers)
    prepared = _prepared(lm)
    forward = Forward(lm.model)
    got = sweep(forward, prepared, lean, configs, bases=["all-w2"])
    # while quantized, no original is held in memory and nothing is cached
    lean.assign_(configs["all-w4"])
    assert not lean._saved and not lean._cache
    lean.assign_(configs["L0-w2"])  # switch scheme on some, restore the others from the file
    lean.restore_()
    assert _bits(lm.model) == before

    fast = engine_for(lm, modmap, "fast")
    want = sweep(forward, prepared, fast, configs, bases=["all-w2"])
    fast.restore_()
    assert _bits(lm.model) == before
    for name in configs:  # the same quantized tensors and originals: the same numbers, exactly
        assert (got.nll[name] == want.nll[name]).all() and (got.kl[name] == want.kl[name]).all()
    assert (got.nll_ref == want.nll_ref).all()
    assert (got.nll["all-w2"] != got.nll_ref).any()  # the sweep did change something


def test_lean_without_a_checkpoint_keeps_only_the_replaced_originals(tiny_lm):
    lm = tiny_lm("llama")
    modmap = build_module_map(lm.model)
    before = _bits(lm.model)
    engine = engine_for(lm, modmap, "lean")
    assert engine.file_backed == 0
    configs = _configs(modmap, modmap.n_layers)
    engine.assign_(configs["L1-w2"])
    assert set(engine._saved) == set(configs["L1-w2"]) and not engine._cache
    engine.assign_(configs["all-w4"])
    engine.restore_()
    assert not engine._saved and _bits(lm.model) == before


def test_loading_in_bf16_equals_loading_in_fp32_then_rounding(saved_model):
    d = str(saved_model("gemma3"))
    bf = load_model(d, dtype="bfloat16").model
    fp = load_model(d, dtype="float32").model
    for (n, a), (_, b) in zip(bf.named_parameters(), fp.named_parameters()):
        assert torch.equal(a.view(torch.int16), b.to(torch.bfloat16).view(torch.int16)), n


def _float64_bpb(model_dir, langs, max_tokens, window, context):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).double().eval()
    corpus = load_udhr()
    out = {}
    for lang in langs:
        docs = corpus.documents(lang)
        toks = [list(t) for t in tok([d.text for d in docs], add_special_tokens=False)["input_ids"]]
        k = ref.take_until_tokens([len(t) for t in toks], max_tokens)
        n_bytes = sum(len(d.text.encode("utf-8")) for d in docs[:k])
        nll = sum(ref.document_nll(model, t, tok.bos_token_id, window, context) for t in toks[:k])
        out[lang] = ref.bpb(nll, n_bytes)
    return out


@pytest.mark.parametrize(("dtype", "rtol"), [("bfloat16", BF16_BPB_RTOL), ("float16", FP16_BPB_RTOL)])
def test_16bit_audit_reference_bpb_agrees_with_float64(saved_model, monkeypatch, dtype, rtol):
    monkeypatch.setenv(MEMORY_ENV, "lean")
    d = str(saved_model("llama"))
    langs, cap, window, context = ("eng_Latn", "heb_Hebr"), 300, 64, 16
    cfg = AuditConfig(
        model=d,
        langs=langs,
        max_tokens=cap,
        n_boot=50,
        scheme="w4g32",
        split="all",
        dtype=dtype,
        eval=EvalSettings(window=window, context=context),
    )
    r = run_audit(cfg).to_dict()
    assert r["model"]["dtype"] == dtype
    want = _float64_bpb(d, langs, cap, window, context)
    for row, lang in zip(r["languages"], langs):
        got = row["bpb_fp"]["value"]
        assert got == pytest.approx(want[lang], rel=rtol), (lang, got, want[lang])
        assert row["bpb_q"]["value"] != got  # quantization changed something


def test_memory_mode_from_the_environment(monkeypatch):
    monkeypatch.setenv(MEMORY_ENV, "lean")
    assert memory_mode() == "lean"
    monkeypatch.setenv(MEMORY_ENV, "tiny")
    with pytest.raises(UserError, match="not a memory mode"):
        memory_mode()
