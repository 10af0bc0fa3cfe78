"""Tasks: cloze and generation fidelity against independent float64 full forward passes; bad task names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quant_disparity.corpus import load_udhr
from quant_disparity.errors import UserError
from quant_disparity.models.modules import build_module_map
from quant_disparity.quant import QuantEngine, parse_scheme
from quant_disparity.tasks import Arms, TaskContext, TaskSettings, parse_tasks
from quant_disparity.tasks.cloze import DISTRACTORS, draw_items
from quant_disparity.tasks.items import halves, heldout_items

LANGS = ["eng_Latn", "heb_Hebr"]


def _setup(tiny_lm, arch):
    lm = tiny_lm(arch)
    lm.model.double()
    modmap = build_module_map(lm.model)
    scheme = parse_scheme("w3g16")
    assignment = {n: scheme for n in modmap.default_targets()}
    engine = QuantEngine(lm.model, modmap)
    return lm, engine, assignment


def _ll(model, ids, n_cont):
    """Plain transformers forward: log-likelihood of the last n_cont tokens."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    return sum(float(logp[p - 1, ids[p]]) for p in range(len(ids) - n_cont, len(ids)))


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_cloze_accuracy_matches_full_forward_float64(tiny_lm, tokenizer, arch):
    lm, engine, assignment = _setup(tiny_lm, arch)
    corpus = load_udhr()
    (task,) = parse_tasks("cloze", TaskSettings(seed=3))
    ctx = TaskContext(lm, corpus, LANGS, Arms(engine, assignment), TaskSettings(seed=3))
    got = task.run(ctx)
    items = heldout_items(corpus, LANGS, "cloze")
    draw = draw_items(items, 3)
    for li, lang in enumerate(LANGS):
        by_id = {d.id: d for d in corpus.documents(lang)}
        for arm in ("fp", "q"):
            engine.assign_(assignment if arm == "q" else {})
            want = []
            for item in items:
                p = tokenizer(halves(by_id[item])[0], add_special_tokens=False)["input_ids"]
                scores = []
                for cand in draw[item]:
                    text = halves(by_id[cand])[1]
                    c = tokenizer(text, add_special_tokens=False)["input_ids"]
                    scores.append(_ll(lm.model, [1, *p, *c], len(c)) / len(text.encode("utf-8")))
                want.append(float(scores[0] > max(scores[1:])))
            engine.restore_()
            np.testing.assert_array_equal(got[li].metrics["accuracy"].num[arm], want)
        assert got[li].item_ids == items
    assert len(set(draw[items[0]])) == DISTRACTORS + 1


def _greedy_ref(model, ids, n, eos):
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            t = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            out.append(t)
            ids.append(t)
            if t == eos:
                break
    return out


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_generate_matches_plain_greedy_float64(tiny_lm, tokenizer, arch):
    import sacrebleu

    lm, engine, assignment = _setup(tiny_lm, arch)
    corpus = load_udhr()
    settings = TaskSettings(gen_tokens=6, batch_tokens=4096)
    (task,) = parse_tasks("generate", settings)
    got = task.run(TaskContext(lm, corpus, ["eng_Latn"], Arms(engine, assignment), settings))
    items = heldout_items(corpus, ["eng_Latn"], "generate")
    by_id = {d.id: d for d in corpus.documents("eng_Latn")}
    gens = {}
    for arm in ("fp", "q"):
        engine.assign_(assignment if arm == "q" else {})
        gens[arm] = [
            _greedy_ref(lm.model, [1, *tokenizer(halves(by_id[i])[0], add_special_tokens=False)["input_ids"]], 6, 2)
            for i in items
        ]
        engine.restore_()
    prefix = []
    chrf = []
    for a, b in zip(gens["fp"], gens["q"]):
        k = 0
        while k < min(len(a), len(b)) and a[k] == b[k]:
            k += 1
        prefix.append(k)
        ta, tb = (tokenizer.decode(x, skip_special_tokens=True) for x in (a, b))
        chrf.append(100.0 if not ta and not tb else sacrebleu.sentence_chrf(tb, [ta]).score)
    m = got[0].metrics
    np.testing.assert_array_equal(m["prefix_match"].num["q"], prefix)
    np.testing.assert_allclose(m["chrf"].num["q"], chrf)
    assert (m["fidelity"].num["fp"] <= m["fidelity"].den["fp"]).all()


def test_bad_task_names_are_one_line_errors():
    with pytest.raises(UserError, match="did you mean 'cloze'"):
        parse_tasks("cloz", TaskSettings())
    with pytest.raises(UserError, match="takes no argument"):
        parse_tasks("cloze:x", TaskSettings())
    with pytest.raises(UserError, match="gen-tokens"):
        TaskSettings(gen_tokens=0)


def test_a_language_without_items_is_refused():
    from quant_disparity.corpus import Corpus, Document

    docs = {"eng_Latn": tuple(Document("eng_Latn", f"a{i:02d}", "x y z " * 5) for i in range(1, 31)), "heb_Hebr": ()}
    corpus = Corpus("toy", docs)
    (task,) = parse_tasks("cloze", TaskSettings())
    with pytest.raises(UserError, match="no items in heb_Hebr"):
        task.check(corpus, ["eng_Latn", "heb_Hebr"])


def test_audit_with_an_unknown_task_exits_2_before_making_output(tmp_path, capsys):
    from conftest import run_cli

    code, _, err = run_cli(["audit", "--tasks", "clozee", "--langs", "eng", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "did you mean 'cloze'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
