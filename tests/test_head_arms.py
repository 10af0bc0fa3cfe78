"""Each arm is scored with its own output layer: plans that quantize the LM head or a tied embedding.

The expected values come from separate full forward passes of independent copies of the model, one per
configuration, with ``log_softmax`` in float64 over the full vocabulary; nothing is shared with the code under
test but the fake-quantized weights themselves.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from quant_disparity.corpus import load_udhr
from quant_disparity.evaluate import EvalSettings, Forward, prepare, score_documents, tokenize
from quant_disparity.evaluate.sweep import sweep
from quant_disparity.experiments.batches import iter_batches
from quant_disparity.models.modules import build_module_map
from quant_disparity.quant import QuantEngine, parse_scheme

#: llama: untied LM head; gemma3 and gpt2: the head is the token embedding (tied).
ARCHS = ("llama", "gemma3", "gpt2")


def _prepared(lm):
    c = load_udhr()
    docs = [d for lang in ("eng_Latn", "heb_Hebr") for d in c.documents(lang)[:2]]
    return prepare(
        docs, tokenize(lm.tokenizer, docs), lm.prefix_token_id, EvalSettings(window=64, context=8, batch_tokens=256)
    )


def _configs(mm):
    s = parse_scheme("w3g16")
    head = next(p.name for p in mm.params if "lm_head" in p.components)
    blocks = mm.default_targets()
    return {
        "head": {head: s},
        "blocks+head": {**{t: s for t in blocks}, head: s},
        "blocks": {t: s for t in blocks},
    }, head


def _full_pass(model, windows, n_docs):
    """Per-document float64 log-probabilities of every scored token, each window alone (no batching)."""
    out = [[] for _ in range(n_docs)]
    with torch.no_grad():
        for w in windows:
            ids = torch.tensor([w.input_ids])
            lp = torch.log_softmax(model(ids).logits.double(), -1)[0]
            p0 = w.first_scored_position
            out[w.doc].append((lp[p0 : len(w.input_ids) - 1], ids[0, p0 + 1 :]))
    return out


def _expected(lm, prep, cfg):
    """(nll_ref, nll, kl) per document from two independent models: the reference and ``cfg`` applied."""
    windows = [w for b in prep.batches for w in b]
    ref_model = copy.deepcopy(lm.model)
    q_model = copy.deepcopy(lm.model)
    QuantEngine(q_model, build_module_map(q_model)).assign_(cfg)
    n = len(prep.docs)
    ref, q = _full_pass(ref_model, windows, n), _full_pass(q_model, windows, n)
    nll_ref, nll, kl = np.zeros(n), np.zeros(n), np.zeros(n)
    for d in range(n):
        for (lr, t), (lq, _) in zip(ref[d], q[d]):
            nll_ref[d] -= lr.gather(1, t[:, None]).sum().item()
            nll[d] -= lq.gather(1, t[:, None]).sum().item()
            kl[d] += (lr.exp() * (lr - lq)).sum().item()
    return nll_ref, nll, kl


def _check(name, got_ref, got_nll, got_kl, exp):
    nll_ref, nll, kl = exp
    np.testing.assert_allclose(got_ref, nll_ref, rtol=2e-5, err_msg=f"{name}: reference NLL")
    np.testing.assert_allclose(got_nll, nll, rtol=2e-5, err_msg=f"{name}: quantized NLL")
    np.testing.assert_allclose(got_kl, kl, rtol=2e-3, atol=1e-6, err_msg=f"{name}: KL")


@pytest.mark.parametrize("arch", ARCHS)
def test_evaluate_scores_each_arm_with_its_own_head(arch, tiny_lm):
    lm = tiny_lm(arch)
    mm = build_module_map(lm.model)
    configs, head = _configs(mm)
    assert ("embed.token" in mm[head].components) == (arch != "llama")
    engine = QuantEngine(lm.model, mm)
    prep = _prepared(lm)
    fw = Forward(lm.model)
    for name, cfg in configs.items():
        s = score_documents(
            fw, prep, use_reference=engine.restore_, use_model=lambda c=cfg: engine.assign_(c), vocab_chunk=100
        )
        engine.restore_()
        _check(name, s.nll_ref, s.nll, s.kl, _expected(lm, prep, cfg))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("reuse", [True, False])
def test_sweep_scores_each_arm_with_its_own_head(arch, reuse, tiny_lm):
    lm = tiny_lm(arch)
    mm = build_module_map(lm.model)
    configs, _ = _configs(mm)
    engine = QuantEngine(lm.model, mm)
    prep = _prepared(lm)
    s = sweep(Forward(lm.model), prep, engine, configs, bases=["blocks+head"], reuse=reuse, vocab_chunk=100)
    for name, cfg in configs.items():
        _check(name, s.nll_ref, s.nll[name], s.kl[name], _expected(lm, prep, cfg))


@pytest.mark.parametrize("arch", ARCHS)
def test_runner_scores_each_trial_with_its_own_head(arch, tiny_lm):
    lm = tiny_lm(arch)
    mm = build_module_map(lm.model)
    configs, _ = _configs(mm)
    prep = _prepared(lm)
    n = len(prep.docs)
    got = {k: {c: np.zeros(n) for c in ("nll", "ref", "kl")} for k in configs}
    missing = {k: set(range(len(prep.groups))) for k in configs}
    for _, results, _ in iter_batches(lm, prep, configs, missing, vocab_chunk=100):
        for name, rows in results.items():
            for doc, nll, ref, kl, _top1 in rows:
                got[name]["nll"][doc] += nll
                got[name]["ref"][doc] += ref
                got[name]["kl"][doc] += kl
    for name, cfg in configs.items():
        g = got[name]
        _check(name, g["ref"], g["nll"], g["kl"], _expected(lm, prep, cfg))
