"""Windows, fused scoring and per-document evaluation on tiny models of several architectures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import CORE_ARCHS
from hypothesis import given, settings
from hypothesis import strategies as st

from quant_disparity.corpus import Document, load_udhr
from quant_disparity.errors import UserError
from quant_disparity.evaluate import (
    EvalSettings,
    Forward,
    LMHead,
    batch_windows,
    make_windows,
    prepare,
    score_documents,
    score_tokens,
    tokenize,
)
from quant_disparity.models.modules import build_module_map
from quant_disparity.quant import QuantEngine, parse_scheme


# -- windows -------------------------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 300), max_len=st.integers(2, 40), context=st.integers(0, 38), prefix=st.booleans())
def test_every_token_is_scored_exactly_once(n, max_len, context, prefix):
    context = min(context, max_len - 2)
    tokens = list(range(1000, 1000 + n))
    wins = make_windows(0, tokens, 7 if prefix else None, max_len, context)
    scored = [t for w in wins for t in w.input_ids[len(w.input_ids) - w.n_scored :]]
    expected = tokens if prefix else tokens[1:]
    assert scored == expected
    for w in wins:
        assert len(w.input_ids) <= max_len
        if prefix:
            assert w.input_ids[0] == 7
        # the context just before the scored tokens is the document's own preceding text
        start = w.input_ids[len(w.input_ids) - w.n_scored] - 1000
        ctx = w.input_ids[(1 if prefix else 0) : len(w.input_ids) - w.n_scored]
        assert list(ctx) == tokens[max(0, start - len(ctx)) : start] or (not prefix and start == 1)


def test_windows_golden():
    wins = make_windows(3, [10, 11, 12, 13, 14, 15, 16], prefix=1, max_len=4, context=1)
    assert [(w.input_ids, w.n_scored) for w in wins] == [
        ((1, 10, 11, 12), 3),
        ((1, 12, 13, 14), 2),
        ((1, 14, 15, 16), 2),
    ]
    assert all(w.doc == 3 for w in wins)
    wins = make_windows(0, [10, 11, 12], prefix=None, max_len=8, context=0)
    assert [(w.input_ids, w.n_scored) for w in wins] == [((10, 11, 12), 2)]


def test_batches_respect_the_token_budget_and_keep_every_window():
    wins = [w for i in range(20) for w in make_windows(i, list(range(5 + 7 * i)), 1, 64, 8)]
    batches = batch_windows(wins, 256)
    assert sorted(id(w) for b in batches for w in b) == sorted(id(w) for w in wins)
    for b in batches:
        longest = max(len(w.input_ids) for w in b)
        assert len(b) * longest <= 256
        assert min(len(w.input_ids) for w in b) >= 0.8 * longest or len(b) == 1


def test_eval_settings_validation():
    with pytest.raises(UserError):
        EvalSettings(window=1)
    with pytest.raises(UserError):
        EvalSettings(window=16, context=15)
    with pytest.raises(UserError):
        EvalSettings(window=64, batch_tokens=32)


# -- fused scoring -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("softcap,scale,bias", [(None, None, False), (5.0, None, False), (None, 0.5, True)])
@pytest.mark.parametrize("vocab_chunk", [7, 64, 1000])
def test_fused_scores_equal_float64_log_softmax(softcap, scale, bias, vocab_chunk):
    g = torch.Generator().manual_seed(0)
    N, H, V = 50, 16, 301
    W = torch.randn(V, H, generator=g)
    b = torch.randn(V, generator=g) if bias else None
    h = torch.randn(N, H, generator=g)
    hr = h + 0.3 * torch.randn(N, H, generator=g)
    t = torch.randint(0, V, (N,), generator=g)
    head = LMHead(W, b, softcap, scale)
    r = score_tokens(h, t, head, hr, vocab_chunk=vocab_chunk, row_chunk=16)

    def logp(x):
        z = x.double() @ W.double().T + (0 if b is None else b.double())
        z = z * (scale or 1)
        if softcap:
            z = torch.tanh(z / softcap) * softcap
        return torch.log_softmax(z, -1)

    lq, lr = logp(h), logp(hr)
    idx = torch.arange(N)
    assert torch.allclose(r.nll, -lq[idx, t], atol=1e-5)
    assert torch.allclose(r.nll_ref, -lr[idx, t], atol=1e-5)
    assert torch.allclose(r.kl, (lr.exp() * (lr - lq)).sum(-1), atol=1e-5)
    assert torch.equal(r.top1_agree, lq.argmax(-1) == lr.argmax(-1))


def test_identical_inputs_give_exactly_zero_kl_and_full_agreement():
    g = torch.Generator().manual_seed(1)
    W, h = torch.randn(500, 8, generator=g), torch.randn(40, 8, generator=g)
    t = torch.randint(0, 500, (40,), generator=g)
    r = score_tokens(h, t, LMHead(W), h.clone(), vocab_chunk=64)
    assert torch.all(r.kl == 0) and bool(r.top1_agree.all()) and torch.equal(r.nll, r.nll_ref)


# -- evaluation on tiny models -------------------------------------------------------------------------------------
def _docs(n_per_lang=3):
    c = load_udhr()
    return [d for lang in ("eng_Latn", "heb_Hebr", "cmn_Hans") for d in c.documents(lang)[:n_per_lang]]


def _hf_reference_nll(model, windows_by_doc, n_docs):
    """Each window alone through the model's own forward and log_softmax (no batching, no padding)."""
    out = np.zeros(n_docs)
    with torch.no_grad():
        for w in windows_by_doc:
            ids = torch.tensor([w.input_ids])
            lp = torch.log_softmax(model(ids).logits.double(), -1)[0]
            p0 = w.first_scored_position
            tgt = ids[0, p0 + 1 :]
            out[w.doc] += -lp[p0 : len(w.input_ids) - 1].gather(1, tgt[:, None]).sum().item()
    return out


@pytest.mark.parametrize("arch", CORE_ARCHS + ("opt", "phi3"))
def test_batched_fused_evaluation_matches_the_models_own_forward(arch, tiny_lm):
    lm = tiny_lm(arch)
    docs = _docs()
    toks = tokenize(lm.tokenizer, docs)
    settings_ = EvalSettings(window=48, context=8, batch_tokens=160, vocab_chunk=100)
    prep = prepare(docs, toks, lm.prefix_token_id, settings_)
    fw = Forward(lm.model)
    assert fw.split  # base model + head reproduces the model's logits for every architecture tested
    scores = score_documents(fw, prep, vocab_chunk=settings_.vocab_chunk)
    windows = [w for b in prep.batches for w in b]
    ref = _hf_reference_nll(lm.model, windows, len(docs))
    np.testing.assert_allclose(scores.nll, ref, rtol=2e-5)
    assert list(scores.n_pred) == [len(t) for t in toks]  # BOS prefix: every token predicted


def test_batching_does_not_change_results(tiny_lm):
    lm = tiny_lm("llama")
    docs = _docs()
    toks = tokenize(lm.tokenizer, docs)
    fw = Forward(lm.model)
    a = score_documents(fw, prepare(docs, toks, 1, EvalSettings(window=64, context=8, batch_tokens=64)))
    b = score_documents(fw, prepare(docs, toks, 1, EvalSettings(window=64, context=8, batch_tokens=1024)))
    np.testing.assert_allclose(a.nll, b.nll, rtol=1e-5)


def test_uniform_model_gives_golden_bits_per_byte(tiny_lm):
    """A zero LM head predicts uniformly: every token costs log2(V) bits, so bpb = n_pred * log2(V) / bytes."""
    lm = tiny_lm("llama")
    with torch.no_grad():
        lm.model.get_output_embeddings().weight.zero_()
    docs = _docs(2)
    toks = tokenize(lm.tokenizer, docs)
    scores = score_documents(Forward(lm.model), prepare(docs, toks, 1, EvalSettings(window=32, context=4)))
    V = lm.model.get_output_embeddings().weight.shape[0]
    for i, d in enumerate(docs):
        bpb = scores.nll[i] / math.log(2) / d.n_bytes
        assert bpb == pytest.approx(len(toks[i]) * math.log2(V) / d.n_bytes, rel=1e-6)


def _swap_in(model: torch.nn.Module, weights: dict[str, torch.Tensor], calls: list[str], tag: str):
    """A use_model / use_reference hook: point every parameter of ``model`` at another model's tensors."""
    params = dict(model.named_parameters())

    def hook():
        calls.append(tag)
        for name, p in params.items():
            p.data = weights[name]

    return hook


@pytest.mark.parametrize("arch", CORE_ARCHS)
def test_a_separately_built_copy_gives_zero_kl_and_full_agreement(arch, tiny_lm):
    """The paired path with two distinct sets of weights: a second copy of the same model, built separately
    (its own tensors), gives KL 0 and top-1 agreement 1; a copy with another seed does not."""
    from conftest import tiny_model

    lm = tiny_lm(arch, seed=0)
    docs = _docs(2)
    prep = prepare(docs, tokenize(lm.tokenizer, docs), 1, EvalSettings(window=64, context=8))
    own = {n: p.data for n, p in lm.model.named_parameters()}
    for seed, same in ((0, True), (1, False)):
        other = {n: p.data for n, p in tiny_model(arch, seed=seed).named_parameters()}
        assert other.keys() == own.keys()
        assert all(other[n].data_ptr() != own[n].data_ptr() for n in own)  # really another model's storage
        calls: list[str] = []
        s = score_documents(
            Forward(lm.model),
            prep,
            use_reference=_swap_in(lm.model, own, calls, "ref"),
            use_model=_swap_in(lm.model, other, calls, "model"),
        )
        _swap_in(lm.model, own, [], "ref")()
        assert calls and calls.count("ref") == calls.count("model") == len(prep.groups)
        if same:
            np.testing.assert_allclose(s.kl, 0, atol=1e-9)
            assert np.array_equal(s.top1, s.n_pred.astype(float))
            np.testing.assert_allclose(s.nll, s.nll_ref, rtol=1e-9)
        else:
            assert np.all(s.kl > 0.01) and np.all(s.top1 < s.n_pred)
            assert not np.allclose(s.nll, s.nll_ref, rtol=1e-3)


@pytest.mark.parametrize("arch", CORE_ARCHS)
def test_a_scheme_below_float_rounding_gives_zero_kl_and_full_agreement(arch, tiny_lm):
    """``fp16`` on weights already on the float16 grid: the engine swaps in newly computed tensors (equal in
    value) for every target, and the result is KL 0 and full agreement. The same scheme on weights off the grid
    changes them by float16 rounding, and the paired scores differ."""
    lm = tiny_lm(arch)
    with torch.no_grad():
        for p in lm.model.parameters():
            p.copy_(p.half().float())
    mm = build_module_map(lm.model)
    targets = mm.default_targets()
    engine = QuantEngine(lm.model, mm)
    docs = _docs(2)
    prep = prepare(docs, tokenize(lm.tokenizer, docs), 1, EvalSettings(window=64, context=8))
    assignment = {n: parse_scheme("fp16") for n in targets}
    original = {n: lm.model.get_parameter(n).data_ptr() for n in targets}
    manifest = engine.assign_(assignment)
    assert manifest.n_changed == len(targets)
    assert all(lm.model.get_parameter(n).data_ptr() != original[n] for n in targets)
    engine.restore_()
    s = score_documents(
        Forward(lm.model), prep, use_reference=engine.restore_, use_model=lambda: engine.assign_(assignment)
    )
    engine.restore_()
    np.testing.assert_allclose(s.kl, 0, atol=1e-9)
    assert np.array_equal(s.top1, s.n_pred.astype(float))
    np.testing.assert_allclose(s.nll, s.nll_ref, rtol=1e-9)
    # control: off the grid (a small perturbation of every weight), the same scheme changes the model
    with torch.no_grad():
        for n in targets:
            lm.model.get_parameter(n).mul_(1 + 2.0**-13)
    engine = QuantEngine(lm.model, mm)
    s = score_documents(
        Forward(lm.model), prep, use_reference=engine.restore_, use_model=lambda: engine.assign_(assignment)
    )
    engine.restore_()
    assert not np.array_equal(s.nll, s.nll_ref) and np.abs(s.kl).max() > 1e-9


@pytest.mark.parametrize("arch", CORE_ARCHS)
def test_quantization_raises_kl_and_restores_exactly(arch, tiny_lm):
    lm = tiny_lm(arch)
    mm = build_module_map(lm.model)
    engine = QuantEngine(lm.model, mm)
    docs = _docs(2)
    prep = prepare(docs, tokenize(lm.tokenizer, docs), 1, EvalSettings(window=64, context=8))
    fw = Forward(lm.model)
    before = score_documents(fw, prep)
    assignment = {n: parse_scheme("w2g16") for n in mm.default_targets()}
    s = score_documents(fw, prep, use_reference=engine.restore_, use_model=lambda: engine.assign_(assignment))
    engine.restore_()
    assert np.all(s.kl > 0) and np.all(s.top1 < s.n_pred)
    np.testing.assert_array_equal(s.nll_ref, before.nll)  # the reference really is the untouched model
    np.testing.assert_array_equal(score_documents(fw, prep).nll, before.nll)  # and it is restored bit for bit


def test_without_prefix_the_first_token_is_not_scored(tiny_lm):
    lm = tiny_lm("gpt2")
    docs = [Document("eng_Latn", "a", "hello world, hello")]
    toks = tokenize(lm.tokenizer, docs)
    prep = prepare(docs, toks, None, EvalSettings(window=16, context=2), tokenizer=lm.tokenizer)
    s = score_documents(Forward(lm.model), prep)
    assert s.n_pred[0] == len(toks[0]) - 1
