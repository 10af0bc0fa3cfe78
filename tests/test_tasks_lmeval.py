"""lmeval:TASK: a local lm-eval task over a dataset written here, against float64 log-likelihoods of plain
forward passes; the audit CLI end to end with it; bad input (unknown task, missing language, no lm-eval)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import run_cli

from quant_disparity.corpus import load_udhr
from quant_disparity.errors import UserError
from quant_disparity.models.modules import build_module_map
from quant_disparity.quant import QuantEngine, parse_scheme
from quant_disparity.tasks import Arms, TaskContext, TaskSettings, parse_tasks
from quant_disparity.tasks.lmeval import task_language

pytest.importorskip("lm_eval")

LANGS = ["eng_Latn", "heb_Hebr"]
N_ITEMS = 8
WORDS = {"eng_Latn": ["a", "e", "i", "o"], "heb_Hebr": ["א", "ב", "ג", "ד"]}


def _rows(lang: str) -> list[dict]:
    docs = load_udhr().documents(lang)
    rows = []
    for i in range(N_ITEMS):
        words = WORDS[lang][i % 4 :] + WORDS[lang][: i % 4]  # the choices in a different order per item
        rows.append({"question": docs[i].text[:60].strip() + ":", "choices": words, "label": (3 * i) % 4})
    return rows


@pytest.fixture(scope="module")
def include(tmp_path_factory):
    """Two local multiple-choice tasks tagged ``qdmc``: one names its language by suffix, one by metadata."""
    d = tmp_path_factory.mktemp("lmeval")
    for lang, name, meta in [
        ("eng_Latn", "qdmc_eng_Latn", ""),
        ("heb_Hebr", "qdmc_hebrew", "metadata:\n  language: he\n"),
    ]:
        (d / f"{lang}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _rows(lang)), encoding="utf-8"
        )
        (d / f"{name}.yaml").write_text(
            f"tag: qdmc\ntask: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {d / (lang + '.jsonl')}\ntest_split: test\noutput_type: multiple_choice\n"
            "doc_to_text: '{{question}}'\ndoc_to_choice: choices\ndoc_to_target: label\n"
            f"metric_list:\n  - metric: acc\n  - metric: acc_norm\n{meta}",
            encoding="utf-8",
        )
    # a third language whose data file is missing: built only when deu_Latn is audited
    (d / "qdmc_deu_Latn.yaml").write_text(
        f"tag: qdmc\ntask: qdmc_deu_Latn\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {d / 'missing.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\ndoc_to_choice: choices\ndoc_to_target: label\n",
        encoding="utf-8",
    )
    return str(d)


def _ll(model, ctx_ids, cont_ids):
    """Plain transformers forward in float64: log-likelihood of cont_ids after ctx_ids."""
    ids = [*ctx_ids, *cont_ids]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    return sum(float(logp[p - 1, ids[p]]) for p in range(len(ctx_ids), len(ids)))


def _expected(model, tokenizer, lang):
    """Per item (acc, acc_norm): the choice " word" after the question, argmax of the log-likelihood (acc_norm:
    per character of the choice), the context split off the whole text's tokens as lm-eval does."""
    acc, norm = [], []
    for row in _rows(lang):
        ctx = tokenizer.encode(row["question"])
        lls = []
        for w in row["choices"]:
            whole = tokenizer.encode(row["question"] + " " + w)
            lls.append(_ll(model, ctx, whole[len(ctx) :]))
        lls_a = np.array(lls)
        acc.append(float(np.argmax(lls_a) == row["label"]))
        norm.append(float(np.argmax(lls_a / np.array([len(w) for w in row["choices"]])) == row["label"]))
    return np.array(acc), np.array(norm)


def test_lmeval_accuracy_matches_float64_reference(tiny_lm, tokenizer, include):
    lm = tiny_lm("llama")
    lm.model.double()
    modmap = build_module_map(lm.model)
    assignment = {n: parse_scheme("w2g16") for n in modmap.default_targets()}
    engine = QuantEngine(lm.model, modmap)
    settings = TaskSettings(lmeval_include=include)
    (task,) = parse_tasks("lmeval:qdmc", settings)
    corpus = load_udhr()
    task.check(corpus, LANGS)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    got = task.run(TaskContext(lm, corpus, LANGS, Arms(engine, assignment), settings))
    for k, v in lm.model.state_dict().items():  # the reference weights are back in place
        assert torch.equal(v, before[k]), k
    assert task.headline == ("accuracy",)
    for li, lang in enumerate(LANGS):
        assert got[li].lang == lang and got[li].item_ids == [str(i) for i in range(N_ITEMS)]
        for arm in ("fp", "q"):
            engine.assign_(assignment if arm == "q" else {})
            acc, norm = _expected(lm.model, tokenizer, lang)
            engine.restore_()
            np.testing.assert_array_equal(got[li].metrics["accuracy"].num[arm], acc)
            np.testing.assert_array_equal(got[li].metrics["accuracy_norm"].num[arm], norm)
    # the quantization is strong enough that the arms differ somewhere (else the pairing is untested)
    assert any(
        not np.array_equal(it.metrics["accuracy"].num["fp"], it.metrics["accuracy"].num["q"])
        or not np.array_equal(it.metrics["accuracy_norm"].num["fp"], it.metrics["accuracy_norm"].num["q"])
        for it in got
    )


@pytest.mark.filterwarnings("ignore::quant_disparity.analysis.stats.TooFewDocumentsWarning")
def test_audit_cli_with_an_lmeval_task(saved_model, include, tmp_path, capsys, isolated_cache):
    out = tmp_path / "o"
    argv = ["audit", "--model", str(saved_model("llama")), "--scheme", "w3g16", "--langs", "eng,heb"]
    argv += ["--max-tokens", "200", "--n-boot", "50", "--tasks", "lmeval:qdmc", "--lmeval-include", include]
    code, _, err = run_cli([*argv, "--out", str(out)], capsys)
    assert code == 0, err
    data = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    (res,) = data["tasks"]["results"]
    assert res["name"] == "lmeval:qdmc" and res["headline"] == ["accuracy"]
    assert [r["lang"] for r in res["languages"]] == LANGS
    for row in res["languages"]:
        assert row["n_items"] == N_ITEMS
        e = row["accuracy"]
        assert e["delta"]["value"] == pytest.approx(e["q"]["value"] - e["fp"]["value"])
        assert e["delta"]["ci95"] is not None  # 8 items: enough for an interval
    assert "accuracy" in res["correlation_with_delta_bpb"]
    assert data["tasks"]["settings"]["lmeval_include"] == include
    assert "### lmeval:qdmc" in (out / "audit.md").read_text(encoding="utf-8")


def test_task_language_from_suffix_or_metadata():
    def lang_of(name, meta=None):
        found = task_language(name, meta)
        return None if found is None else found[0]

    assert lang_of("belebele_eng_Latn") == "eng_Latn"
    assert task_language("xnli_en", None)[1]("eng_Latn")
    assert not task_language("xnli_en", None)[1]("deu_Latn")
    assert task_language("xstorycloze_zh", None)[1]("cmn_Hans")
    assert lang_of("arc_easy") is None and lang_of("hellaswag") is None
    assert lang_of("mytask", {"language": "heb"}) == "heb"
    with pytest.raises(UserError, match="not a language id"):
        task_language("mytask", {"language": "klingonish"})


def test_unknown_lmeval_task_is_one_line(include, tmp_path, capsys):
    (task,) = parse_tasks("lmeval:qdmcx", TaskSettings(lmeval_include=include))
    with pytest.raises(UserError, match="unknown lm-eval task 'qdmcx' \\(did you mean 'qdmc'"):
        task.check(load_udhr(), LANGS)
    with pytest.raises(UserError, match="needs TASK"):
        parse_tasks("lmeval", TaskSettings())
    argv = ["audit", "--tasks", "lmeval:qdmcx", "--lmeval-include", include, "--langs", "eng"]
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "unknown lm-eval task 'qdmcx'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_lmeval_task_without_the_language_is_refused(include, tmp_path, capsys):
    (task,) = parse_tasks("lmeval:qdmc", TaskSettings(lmeval_include=include))
    with pytest.raises(UserError, match="has no subtask in amh_Ethi \\(its languages: deu_Latn, eng_Latn, he\\)"):
        task.check(load_udhr(), ["eng_Latn", "amh_Ethi"])
    argv = ["audit", "--tasks", "lmeval:qdmc", "--lmeval-include", include, "--langs", "eng,amh"]
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "no subtask in amh_Ethi" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_a_dataset_lm_eval_cannot_load_is_one_line(include):
    (task,) = parse_tasks("lmeval:qdmc", TaskSettings(lmeval_include=include))
    task.check(load_udhr(), LANGS)  # the German task is not built for English and Hebrew
    with pytest.raises(UserError, match="lm-eval cannot load task 'qdmc'"):
        task.check(load_udhr(), ["eng_Latn", "deu_Latn"])


def test_missing_lm_eval_names_the_install_command(monkeypatch, tmp_path, capsys):
    for mod in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    (task,) = parse_tasks("lmeval:xnli", TaskSettings())
    with pytest.raises(UserError, match=r"pip install 'quant-disparity\[tasks\]'"):
        task.check(load_udhr(), LANGS)
    code, _, err = run_cli(["audit", "--tasks", "lmeval:xnli", "--langs", "eng", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "pip install 'quant-disparity[tasks]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
