"""inspect neurons: firing counts vs separate float64 forward passes, LAPE's selection on a hand toy, planted
language-specific neurons, the protection experiment's plans and statistics, and bad input."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from conftest import run_cli, tiny_model

from quant_disparity.analysis.stats import LN2, MIN_DOCS_FOR_INTERVAL
from quant_disparity.corpus.documents import Document
from quant_disparity.errors import UserError
from quant_disparity.evaluate import EvalSettings, prepare
from quant_disparity.inspect.neuron_protect import UNIFORM, Column, ProtectPlan, protection_table
from quant_disparity.inspect.neurons import (
    count_firing,
    entropy,
    jaccard,
    kth_quantile,
    lape,
    mlp_sites,
    neuron_items,
    other_matched,
    random_matched,
)
from quant_disparity.models.modules import ModuleMap, build_module_map, weight_2d

# -- firing counts vs a hand computation ---------------------------------------------------------------------------

#: The activation each architecture's MLP applies (written out here, not taken from the model).
_ACT = {
    "llama": lambda z: z * torch.sigmoid(z),  # SiLU
    "qwen2": lambda z: z * torch.sigmoid(z),
    "phi3": lambda z: z * torch.sigmoid(z),
    "gemma3": lambda z: 0.5 * z * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3))),  # GELU-tanh
    "gpt2": lambda z: 0.5 * z * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3))),
    "opt": torch.relu,
    "gpt_neox": lambda z: 0.5 * z * (1 + torch.erf(z / math.sqrt(2))),  # exact GELU
    "bloom": lambda z: 0.5 * z * (1 + torch.tanh(0.79788456 * z * (1 + 0.044715 * z * z))),
}

LANGS = 3


def _documents(n_docs: int = 6, seed: int = 0) -> tuple[list[Document], list[list[int]], list[int]]:
    """Documents of random token ids, of several lengths (several windows, padding), two per language."""
    g = torch.Generator().manual_seed(seed)
    docs, tokens, lang_of = [], [], []
    for d in range(n_docs):
        n = int(torch.randint(5, 70, (1,), generator=g))
        tokens.append([int(t) for t in torch.randint(3, 200, (n,), generator=g)])
        docs.append(Document(f"l{d % LANGS}", f"{d}", "x" * n))
        lang_of.append(d % LANGS)
    return docs, tokens, lang_of


def _hand_counts(model: torch.nn.Module, modmap: ModuleMap, arch: str, prepared, lang_of) -> tuple[np.ndarray, ...]:
    """Per block, neuron and language, tokens with act(pre-activation) > 0, from a float64 copy run window by
    window (no batching, no padding). Returns bounds: counts of z > +eps and of z > -eps (a float32 run may
    differ only where the float64 pre-activation is within eps of zero)."""
    m64 = copy.deepcopy(model).double()
    act = _ACT[arch]
    firsts = []  # per block: the MLP's first projection (gate, gate_up or fc1) and its ParamInfo
    for layer in range(modmap.n_layers):
        mine = {p.component: p for p in modmap.params if p.layer == layer and p.role == "matrix"}
        p = mine.get("mlp.gate") or mine.get("mlp.gate_up") or mine["mlp.up"]
        firsts.append(p)
    width = weight_2d(m64.get_parameter(firsts[0].name), firsts[0]).shape[0]
    if firsts[0].component == "mlp.gate_up":
        width //= 2
    eps = 1e-6
    lo = np.zeros((len(firsts), width, LANGS), dtype=np.int64)
    hi = np.zeros_like(lo)
    seen: dict[int, torch.Tensor] = {}
    hooks = []
    for k, p in enumerate(firsts):

        def pre(mod, args, k=k):
            seen[k] = args[0].detach()

        hooks.append(m64.get_submodule(p.module).register_forward_pre_hook(pre))
    try:
        for batch in prepared.batches:
            for w in batch:
                with torch.no_grad():
                    m64(input_ids=torch.tensor([w.input_ids]), use_cache=False)
                first = w.first_scored_position + 1
                for k, p in enumerate(firsts):
                    x = seen[k].reshape(-1, seen[k].shape[-1])[first:]  # [counted tokens, hidden] (OPT: 2-D)
                    mod = m64.get_submodule(p.module)
                    W = weight_2d(m64.get_parameter(p.name), p)[:width]  # the gate half of a fused gate_up
                    z = x @ W.T
                    if getattr(mod, "bias", None) is not None:
                        z = z + mod.bias[:width]
                    a = act(z)
                    near = z.abs() <= eps  # a float32 run may fall either way here
                    lo[k, :, lang_of[w.doc]] += ((a > 0) & ~near).sum(0).numpy()
                    hi[k, :, lang_of[w.doc]] += ((a > 0) | near).sum(0).numpy()
    finally:
        for h in hooks:
            h.remove()
    return lo, hi


@pytest.mark.parametrize("arch", ["llama", "gemma3", "phi3", "gpt2", "opt", "gpt_neox", "bloom"])
def test_firing_counts_equal_float64_forward_passes(arch):
    model = tiny_model(arch)
    modmap = build_module_map(model)
    docs, tokens, lang_of = _documents()
    settings = EvalSettings(window=24, context=4, batch_tokens=64, score_rows=64)
    prepared = prepare(docs, tokens, 1, settings)
    assert len(prepared.batches) > 1 and any(len(b) > 1 for b in prepared.batches)  # batching and padding happen
    counts = count_firing(model, modmap, prepared, lang_of, LANGS)
    lo, hi = _hand_counts(model, modmap, arch, prepared, lang_of)
    assert counts.fired.shape == lo.shape
    assert ((counts.fired >= lo) & (counts.fired <= hi)).all()
    assert (hi - lo).sum() <= 2  # the bounds are tight: the comparison is exact almost everywhere
    assert 0 < counts.fired.sum() < counts.fired.size * counts.tokens.max()  # neither nothing nor everything fires
    # every document token is counted once (each document has the prefix token, so every token is predicted)
    expected = np.bincount(lang_of, weights=[len(t) for t in tokens], minlength=LANGS).astype(np.int64)
    assert counts.tokens.tolist() == expected.tolist()


# -- LAPE on a hand toy --------------------------------------------------------------------------------------------
def _toy() -> np.ndarray:
    p = np.zeros((1, 10, 3))
    p[0, 0] = [0.9, 0.0, 0.0]  # only language 0: entropy 0
    p[0, 1] = [0.0, 0.8, 0.8]  # languages 1 and 2, but below the bar
    p[0, 2] = [0.5, 0.5, 0.5]
    p[0, 3] = [0.95, 0.85, 0.0]
    p[0, 4] = [0.01, 0.0, 0.0]  # entropy 0 but rare: never a candidate
    p[0, 5] = [0.0, 0.0, 0.0]  # never fires
    p[0, 6:] = [0.3, 0.2, 0.1]
    return p


def test_lape_on_a_hand_toy():
    p = _toy()
    # 30 probabilities; the 0.95 quantile is the round(28.5) = 28th smallest: ..., 0.8, 0.8, [0.85], 0.9, 0.95
    assert kth_quantile(p, 0.95) == 0.85
    h = entropy(p)
    assert h[0, 0] == 0.0 and h[0, 4] == 0.0 and np.isnan(h[0, 5])
    assert h[0, 2] == pytest.approx(math.log(3))
    a, b = 0.95 / 1.8, 0.85 / 1.8
    assert h[0, 3] == pytest.approx(-(a * math.log(a) + b * math.log(b)))
    assert h[0, 6] == pytest.approx(-sum(x / 0.6 * math.log(x / 0.6) for x in (0.3, 0.2, 0.1)))

    # top 20 % of 10 neurons = 2; candidates (some p > 0.85): neurons 0 and 3 only
    s = lape(p, top_rate=0.2, activation_quantile=0.95)
    assert s.threshold == 0.85 and s.n_candidates == 2 and s.n_selected == 2
    assert s.entropy_cutoff == pytest.approx(h[0, 3])
    own = {(lang, i) for _, i, lang in zip(*np.nonzero(s.own))}
    assert own == {(0, 0), (0, 3)}  # neuron 3's 0.85 for language 1 is not above the bar
    # top 10 % = 1 neuron: the lowest entropy, neuron 0
    s = lape(p, top_rate=0.1, activation_quantile=0.95)
    assert {(lang, i) for _, i, lang in zip(*np.nonzero(s.own))} == {(0, 0)}
    # a lower bar (the 0.8 quantile is the 24th smallest, 0.5): neuron 1 becomes a candidate for languages 1, 2
    s = lape(p, top_rate=0.3, activation_quantile=0.8)
    assert s.threshold == 0.5
    assert {(lang, i) for _, i, lang in zip(*np.nonzero(s.own))} == {(0, 0), (1, 1), (2, 1), (0, 3), (1, 3)}


def test_jaccard_by_hand():
    own = np.zeros((2, 4, 3), dtype=bool)
    own[0, 0, 0] = own[0, 1, 0] = own[1, 2, 0] = True  # language 0: 3 neurons
    own[0, 1, 1] = own[1, 2, 1] = own[1, 3, 1] = own[0, 3, 1] = True  # language 1: 4 neurons, 2 shared
    j = jaccard(own)
    assert j[0, 1] == pytest.approx(2 / 5) and j[1, 0] == pytest.approx(2 / 5)
    assert j[0, 0] == 1.0 and np.isnan(j[2, 2]) and j[0, 2] == 0.0


def test_neuron_items_are_ranges():
    assert neuron_items({3: [5, 1, 2, 3, 9], 0: [7]}) == ["0:7", "3:1-3", "3:5", "3:9"]


def test_random_and_other_sets_match_counts():
    counts = {0: 3, 2: 1}
    rng = np.random.default_rng(0)
    r = random_matched(counts, {0: 16, 2: 16}, rng)
    assert {k: len(v) for k, v in r.items()} == counts and all(len(set(v)) == len(v) for v in r.values())
    assert r == random_matched(counts, {0: 16, 2: 16}, np.random.default_rng(0))  # seeded
    share = np.zeros((3, 16))
    share[0, [4, 6, 8]] = [0.9, 0.8, 0.7]
    share[2, [1, 2]] = [0.2, 0.6]
    ent = np.zeros((3, 16))
    ent[0, 10], ent[0, 11] = 0.5, 0.1
    # the other language owns neurons 10, 11 of layer 0 (11 has the lower entropy) and none of layer 2
    got, filled = other_matched(counts, {0: [10, 11]}, share, ent, [0, 1, 2])
    assert got == {0: [4, 10, 11], 2: [2]} and filled == 2
    got, filled = other_matched({0: 1}, {0: [10, 11]}, share, ent, [0, 1, 2])
    assert got == {0: [11]} and filled == 0


# -- planted neurons ------------------------------------------------------------------------------------------------
def _plant(arch: str) -> tuple[torch.nn.Module, list[set[int]]]:
    """A tiny model whose block-0 neuron 5 fires exactly on language 0's tokens and neuron 9 on language 1's:
    embedding dimension 0 (1) +3 on language 0's (1's) tokens and -3 elsewhere, the neuron's first-projection
    row reading only that dimension; no other projection reads those two dimensions and the planted neurons
    write nothing back, so the rest of the model is blind to the language."""
    model = tiny_model(arch)
    vocab = [set(range(10, 40)), set(range(50, 80)), set(range(90, 120))]
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[:, 0] = -3.0
        emb[:, 1] = -3.0
        emb[sorted(vocab[0]), 0] = 3.0
        emb[sorted(vocab[1]), 1] = 3.0
        modmap = build_module_map(model)
        first = "mlp.up" if arch == "gpt2" else "mlp.gate"
        readers = ("attn.q", "attn.k", "attn.v", "attn.qkv", "mlp.gate", "mlp.up")
        for p in modmap.params:
            t = model.get_parameter(p.name)
            if p.component in readers and p.role == "matrix":
                weight_2d(t, p)[:, :2] = 0.0  # nothing else reads the two marker dimensions
            if p.layer != 0:
                continue
            if p.component == first and p.role == "matrix":
                w = weight_2d(t, p)
                w[5].zero_()
                w[9].zero_()
                w[5, 0] = 1.0
                w[9, 1] = 1.0
            if p.component == "mlp.down" and p.role == "matrix":
                weight_2d(t, p)[:, [5, 9]] = 0.0  # the planted neurons write nothing back
            if p.component == "mlp.up" and p.role == "bias" and arch == "gpt2":
                t[5] = t[9] = 0.0
    return model, vocab


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_planted_language_neurons_are_found(arch):
    model, vocab = _plant(arch)
    modmap = build_module_map(model)
    g = torch.Generator().manual_seed(1)
    docs, tokens, lang_of = [], [], []
    for d in range(9):
        lang = d % 3
        pool = sorted(vocab[lang])
        tokens.append([pool[int(i)] for i in torch.randint(0, len(pool), (60,), generator=g)])
        docs.append(Document(f"l{lang}", str(d), "x" * 60))
        lang_of.append(lang)
    prepared = prepare(docs, tokens, 1, EvalSettings(window=64, context=4, batch_tokens=256))
    counts = count_firing(model, modmap, prepared, lang_of, 3)
    p = counts.probabilities
    assert p[0, 5].tolist() == [1.0, 0.0, 0.0] and p[0, 9].tolist() == [0.0, 1.0, 0.0]
    s = lape(p)
    own = [{(int(a), int(b)) for a, b in zip(*np.nonzero(s.own[:, :, j]))} for j in range(3)]
    assert (0, 5) in own[0] and (0, 9) in own[1]
    assert (0, 5) not in own[1] | own[2] and (0, 9) not in own[0] | own[2]


# -- protection statistics ------------------------------------------------------------------------------------------
def _plan(row: str, kind: str) -> ProtectPlan:
    return ProtectPlan(row, kind, row, {0: [1]}, "", {}, {"total_bytes": 1.0})


def test_protection_table_by_hand():
    rng = np.random.default_rng(3)
    n = 7  # language a: 5 documents (an interval), language b: 2 (none)
    nll_ref = rng.uniform(50, 100, n)
    nll = {UNIFORM: nll_ref + rng.uniform(1, 5, n)}
    plans = [_plan("a", k) for k in ("own", "random", "other")]
    for p in plans:
        nll[p.name] = nll[UNIFORM] - rng.uniform(0, 1, n)
    n_bytes = rng.integers(100, 300, n).astype(float)
    weights_a = np.ones((4, 5))
    weights_a[1] = [2, 0, 1, 1, 1]
    cols = [
        Column("a", np.arange(5), n_bytes[:5], weights_a),
        Column("b", np.arange(5, 7), n_bytes[5:], np.ones((4, 2))),
    ]
    t = protection_table(nll, nll_ref, cols, plans)
    assert MIN_DOCS_FOR_INTERVAL == 5
    for c, idx in (("a", slice(0, 5)), ("b", slice(5, 7))):
        bpb = lambda v: v[idx].sum() / (LN2 * n_bytes[idx].sum())
        assert t[c]["bpb_fp"]["value"] == pytest.approx(bpb(nll_ref))
        assert t[c]["delta_bpb_uniform"]["value"] == pytest.approx(bpb(nll[UNIFORM]) - bpb(nll_ref))
        for p in plans:
            assert t[c]["recovered"][p.name]["value"] == pytest.approx(bpb(nll[UNIFORM]) - bpb(nll[p.name]))
        own_random = t[c]["differences"]["a"]["own-random"]["value"]
        assert own_random == pytest.approx(bpb(nll["random:a"]) - bpb(nll["own:a"]))
    assert t["a"]["recovered"]["own:a"]["ci95"] is not None
    # the resample [2, 0, 1, 1, 1] is one of the replicates: the interval covers its value
    w = weights_a[1]
    rec1 = (w @ nll[UNIFORM][:5] - w @ nll["own:a"][:5]) / (LN2 * (w @ n_bytes[:5]))
    lo, hi = t["a"]["recovered"]["own:a"]["ci95"]
    ones = (nll[UNIFORM][:5].sum() - nll["own:a"][:5].sum()) / (LN2 * n_bytes[:5].sum())
    assert (lo, hi) == pytest.approx(tuple(np.percentile([ones, rec1, ones, ones], [2.5, 97.5])))
    assert t["b"]["recovered"]["own:a"]["ci95"] is None and "too few documents" in t["b"]["note"]


# -- end to end on a tiny model and the CLI ------------------------------------------------------------------------
LANGS_CLI = "eng_Latn,heb_Hebr,cmn_Hans,amh_Ethi"


def test_run_writes_plans_of_equal_bits_and_neuron_files(tiny_lm, tmp_path, monkeypatch):
    from quant_disparity.inspect.neuron_run import NeuronsConfig, run_neurons
    from quant_disparity.quant.plan import Plan

    lm = tiny_lm("llama")
    cfg = NeuronsConfig(
        langs=tuple(LANGS_CLI.split(",")), max_tokens=300, protect=("all",), heldout_max_tokens=200, n_boot=100
    )
    data, files = run_neurons(cfg, lm=lm)
    again, _ = run_neurons(cfg, lm=lm)
    assert json.dumps({k: v for k, v in data.items() if k not in ("timing", "environment")}, sort_keys=True) == (
        json.dumps({k: v for k, v in again.items() if k not in ("timing", "environment")}, sort_keys=True)
    )  # deterministic
    prot = data["protection"]
    assert prot["plans"], "some language has own neurons"
    by_row: dict[str, list] = {}
    for p in prot["plans"]:
        by_row.setdefault(p["row"], []).append(p)
    for row, ps in by_row.items():
        assert [p["kind"] for p in ps] == ["own", "random", "other"]
        assert len({p["total_bytes"] for p in ps}) == 1 and len({tuple(p["by_layer"]) for p in ps}) == 1
        own = next(lang for lang in data["languages"] if lang["id"] == row)
        assert ps[0]["by_layer"] == own["own_by_layer"]
    # the recovered damage equals separate full forward passes of the two plans, one document at a time
    from quant_disparity.corpus import load_udhr, select_documents
    from quant_disparity.evaluate import tokenize
    from quant_disparity.quant import engine_for

    row = next(iter(by_row))
    modmap = build_module_map(lm.model)
    chosen = select_documents(load_udhr(), cfg.heldout(), lambda docs: tokenize(lm.tokenizer, docs))
    engine = engine_for(lm, modmap)

    def bpb(plan_text: str, lang: str) -> float:
        engine.assign_(Plan.parse(plan_text).resolve(modmap).assignment())
        try:
            nats = 0.0
            for toks in chosen.tokens[lang]:
                ids = torch.tensor([[lm.prefix_token_id, *toks]])
                with torch.no_grad():
                    logp = torch.log_softmax(lm.model(input_ids=ids).logits[0, :-1].double(), -1)
                nats -= float(logp.gather(1, ids[0, 1:, None]).sum())
        finally:
            engine.restore_()
        return nats / (math.log(2) * sum(d.n_bytes for d in chosen.docs[lang]))

    for lang in (row, next(c for c in prot["evaluated"] if c != row)):
        expected = bpb("w4g128:*", lang) - bpb(files[f"plan-{row}.txt"].strip(), lang)
        got = prot["languages"][lang]["recovered"][f"own:{row}"]["value"]
        assert got == pytest.approx(expected, rel=1e-3, abs=1e-6)

    # the neuron file, read through neurons:@FILE, keeps exactly the plan file's elements
    monkeypatch.chdir(tmp_path)
    (tmp_path / "n.txt").write_text(files[f"neurons-{row}.txt"])
    via_file = Plan.parse("keep:neurons:@n.txt; w4g128:*").resolve(modmap)
    via_plan = Plan.parse(files[f"plan-{row}.txt"].strip()).resolve(modmap)
    assert via_file.assignment() == via_plan.assignment()
    assert (
        via_file.totals["total_bytes"]
        == prot["plans"][[p["name"] for p in prot["plans"]].index(f"own:{row}")]["total_bytes"]
    )


def test_cli_neurons_writes_and_refuses_bad_input(saved_model, tmp_path, capsys):
    model = str(saved_model("llama"))
    out = tmp_path / "n"
    args = ["inspect", "neurons", "--model", model, "--langs", LANGS_CLI, "--max-tokens", "200", "--out", str(out)]
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0, stdout
    names = {p.name for p in out.iterdir()}
    assert {"neurons.json", "neurons.md", "neurons_by_layer.png", "overlap.png"} <= names
    data = json.loads((out / "neurons.json").read_text())
    # one selection document per language at this cap: marked, never given an interval
    assert all("too few documents" in lang["note"] for lang in data["languages"])
    before = (out / "neurons.json").read_bytes()
    code, _, err = run_cli(args, capsys)  # an existing result is kept
    assert code == 2 and "already holds neurons.json" in err and (out / "neurons.json").read_bytes() == before

    bad = tmp_path / "bad"
    for extra, message in (
        (["--langs", "eng_Latn,xxq_Zzzz"], "xxq"),
        (["--langs", "eng_Latn"], "at least two languages"),
        (["--protect", "fra_Latn"], "--protect"),
        (["--protect", "eng_Latn", "--protect-eval", "fra_Latn"], "--protect-eval"),
        (["--protect-eval", "eng_Latn"], "needs --protect"),
        (["--top-rate", "0"], "--top-rate"),
    ):
        code, _, err = run_cli([*args[:-1], str(bad), *extra], capsys)
        assert code == 2, extra
        assert message in err and len(err.strip().splitlines()) == 1
        assert not bad.exists()


def test_a_model_without_a_recognised_mlp_is_refused():
    model = tiny_model("llama")
    modmap = build_module_map(model)
    no_mlp = ModuleMap(
        modmap.blocks_path,
        modmap.n_layers,
        tuple(p for p in modmap.params if not (p.component or "").startswith("mlp")),
    )
    with pytest.raises(UserError, match="no MLP"):
        mlp_sites(model, no_mlp)


def test_a_model_without_an_mlp_stops_the_command_before_any_work(tokenizer):
    from quant_disparity.inspect.neuron_run import NeuronsConfig, run_neurons
    from quant_disparity.models import wrap_model

    model = tiny_model("llama")
    for layer in model.model.layers:
        layer.mlp = torch.nn.Identity()  # blocks of attention only
    lm = wrap_model(model, tokenizer, name="tiny-no-mlp")
    with pytest.raises(UserError, match="no MLP with a down projection"):
        run_neurons(NeuronsConfig(langs=("eng_Latn", "heb_Hebr"), max_tokens=50), lm=lm)
