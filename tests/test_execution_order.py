"""Modules outside the decoder blocks are placed by where they run (a probe forward), not by their names."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ARCHS

from quant_disparity.corpus import load_udhr
from quant_disparity.evaluate import EvalSettings, Forward, prepare, score_documents, tokenize
from quant_disparity.evaluate.sweep import sweep
from quant_disparity.models.modules import build_module_map
from quant_disparity.quant import QuantEngine, parse_scheme
from quant_disparity.quant.plan import Plan

#: The norm each architecture applies to the last block's output, read off the transformers sources.
FINAL_NORM = {
    "llama": "model.norm",
    "mistral": "model.norm",
    "qwen2": "model.norm",
    "gemma": "model.norm",
    "gemma2": "model.norm",
    "gemma3": "model.norm",
    "gpt2": "transformer.ln_f",
    "opt": "model.decoder.final_layer_norm",
    "gpt_neox": "gpt_neox.final_layer_norm",
    "bloom": "transformer.ln_f",
    "phi": "model.final_layernorm",
    "phi3": "model.norm",
    "falcon": "transformer.ln_f",
}


def test_bloom_embedding_norm_runs_before_the_blocks(tiny_lm):
    mm = build_module_map(tiny_lm("bloom").model)
    assert mm["transformer.word_embeddings_layernorm.weight"].stage == "before"
    assert mm["transformer.ln_f.weight"].stage == "after"


@pytest.mark.parametrize("arch", ARCHS)
def test_norm_final_is_the_norm_after_the_blocks(arch, tiny_lm):
    mm = build_module_map(tiny_lm(arch).model)
    resolved = Plan.parse("keep:norm.final; w4g16:norms").resolve(mm)
    kept = {d.name.rsplit(".", 1)[0] for d in resolved.decisions if d.action == "keep"}
    assert kept == {FINAL_NORM[arch]}


def _prepared(lm):
    c = load_udhr()
    docs = [d for lang in ("eng_Latn", "heb_Hebr") for d in c.documents(lang)[:2]]
    return prepare(
        docs, tokenize(lm.tokenizer, docs), lm.prefix_token_id, EvalSettings(window=64, context=8, batch_tokens=256)
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_replay_is_exact_when_a_module_outside_the_blocks_changes(arch, tiny_lm):
    """Each tensor outside the blocks quantized alone, on top of quantized blocks: a replaying sweep must give
    what one separate evaluation per configuration gives."""
    lm = tiny_lm(arch)
    mm = build_module_map(lm.model)
    engine = QuantEngine(lm.model, mm)
    s = parse_scheme("w3g16")
    blocks = {t: s for t in mm.default_targets()}
    outside: dict[str, list[str]] = {}  # module -> its tensors (a norm's weight and bias change together)
    for p in mm.params:
        if p.layer is None and p.numel % 16 == 0:
            outside.setdefault(p.module, []).append(p.name)
    assert outside
    configs = {"blocks": blocks}
    for module, names in outside.items():
        configs[module] = {**blocks, **{n: s for n in names}}
    prep = _prepared(lm)
    fw = Forward(lm.model)
    fast = sweep(fw, prep, engine, configs, bases=["blocks"], reuse=True, vocab_chunk=100)
    assert fast.stats["replay"]
    for name, cfg in configs.items():
        one = score_documents(
            fw, prep, use_reference=engine.restore_, use_model=lambda c=cfg: engine.assign_(c), vocab_chunk=100
        )
        engine.restore_()
        np.testing.assert_allclose(fast.nll[name], one.nll, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(fast.kl[name], one.kl, rtol=1e-5, atol=1e-9, err_msg=name)
