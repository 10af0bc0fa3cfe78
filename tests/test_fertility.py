"""Tokenizer fertility in the audit: tokens per byte and per word per language, and the correlation of the damage
with them. Expected values are counted by hand or recomputed from the tokenizer and numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

from quant_disparity.analysis import language_stats
from quant_disparity.analysis.fertility import count_words, fertility_summary, language_fertility
from quant_disparity.analysis.records import AuditResult, LanguageRow
from quant_disparity.audit import run_audit
from quant_disparity.config import AuditConfig
from quant_disparity.evaluate import EvalSettings
from quant_disparity.report.tables import audit_markdown, audit_rich_table, audit_summary_lines

pytestmark = pytest.mark.usefixtures("isolated_cache")


def _spearman(x, y) -> float:
    """Spearman by hand: Pearson correlation of ranks (no ties in these tests), float64."""
    rx = np.argsort(np.argsort(np.asarray(x, dtype=np.float64))).astype(np.float64)
    ry = np.argsort(np.argsort(np.asarray(y, dtype=np.float64))).astype(np.float64)
    rx -= rx.mean()
    ry -= ry.mean()
    return float((rx * ry).sum() / np.sqrt((rx * rx).sum() * (ry * ry).sum()))


def test_words_are_runs_with_a_letter_or_digit_between_spaces_or_ethiopic_wordspaces():
    assert count_words("Hello, world — again 42 !") == 4  # "—" and "!" are no words
    assert count_words("  two\twords\n") == 2
    assert count_words("የሰው፡ልጅ፡ሁሉ፡ነው።") == 4  # Amharic separates words with ፡ (U+1361)
    assert count_words("") == 0


def test_language_fertility_counts_tokens_bytes_and_words_and_knows_scripts_without_spaces():
    f = language_fertility("Latn", ["ab cd", "é f"], [3, 2])
    assert (f.tokens, f.bytes, f.words) == (5, 5 + 4, 4)  # é is 2 bytes
    assert f.tokens_per_byte == pytest.approx(5 / 9) and f.tokens_per_word == pytest.approx(5 / 4)
    han = language_fertility("Hans", ["人人生而自由, 在尊严"], [7]).to_dict()
    assert han["words"] is None and han["tokens_per_word"] is None
    assert han["tokens_per_byte"] == pytest.approx(7 / len("人人生而自由, 在尊严".encode()))
    assert "not applicable" in han["tokens_per_word_note"] and "Hans" in han["tokens_per_word_note"]
    with pytest.raises(ValueError):
        language_fertility("Latn", ["a"], [1, 2])


def test_fertility_correlation_is_the_spearman_of_relative_damage_with_fertility():
    rng = np.random.default_rng(0)
    per_lang, fert = [], {}
    damage = {"a": 0.01, "b": 0.05, "c": 0.02, "d": 0.08, "e": 0.03}
    tpb = {"a": 0.2, "b": 0.6, "c": 0.3, "d": 0.4, "e": 0.5}
    for i, lang in enumerate(damage):
        n = 8
        nll_ref = rng.uniform(90, 110, n)
        per_lang.append(
            language_stats(
                lang,
                {
                    "nll_ref": nll_ref,
                    "nll": nll_ref * (1 + damage[lang]),
                    "kl": np.ones(n),
                    "top1": np.ones(n),
                    "n_pred": np.full(n, 50.0),
                    "bytes": np.full(n, 100.0),
                },
                200,
                rng,
            )
        )
        script = "Hans" if lang == "e" else "Latn"
        fert[lang] = language_fertility(script, ["x " * 50], [round(tpb[lang] * 100)])
    # the bytes of "x " * 50 are 100, so tokens per byte is tpb; words are 50 (none for "e")
    s = fertility_summary(per_lang, fert, np.random.default_rng(1))
    expected = _spearman([tpb[k] for k in damage], [damage[k] for k in damage])
    c = s["tokens_per_byte"]
    assert c["n_languages"] == 5 and c["spearman"]["value"] == pytest.approx(expected)
    lo, hi = c["spearman"]["ci95"]
    assert -1 <= lo <= hi <= 1
    w = s["tokens_per_word"]
    assert w["languages"] == ["a", "b", "c", "d"] and s["not_applicable"] == ["e"]
    assert w["spearman"]["value"] == pytest.approx(_spearman([tpb[k] for k in "abcd"], [damage[k] for k in "abcd"]))
    # seeded: the same numbers again
    assert fertility_summary(per_lang, fert, np.random.default_rng(1)) == s


def _audit(model_dir):
    cfg = AuditConfig(
        model=str(model_dir),
        langs=("eng", "cmn_Hans", "amh", "heb"),
        max_tokens=400,
        min_docs=5,
        n_boot=100,
        scheme="w3g32",
        eval=EvalSettings(window=128, context=16),
    )
    return cfg, run_audit(cfg).to_dict()


def test_the_audit_reports_fertility_on_the_documents_it_scores(saved_model, tokenizer):
    from quant_disparity.corpus import load_udhr

    model_dir = saved_model("llama")
    cfg, r = _audit(model_dir)
    corpus = load_udhr()
    texts = {
        (d.lang, d.id): d.text
        for lang in ("eng_Latn", "cmn_Hans", "amh_Ethi", "heb_Hebr")
        for d in corpus.documents(lang)
    }
    for row in r["languages"]:
        docs = [texts[(row["id"], d["doc_id"])] for d in r["documents"] if d["lang"] == row["id"]]
        tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in docs)
        n_bytes = sum(len(t.encode("utf-8")) for t in docs)
        f = row["fertility"]
        assert f["tokens"] == tokens and f["bytes"] == n_bytes
        assert f["tokens_per_byte"] == pytest.approx(tokens / n_bytes)
        if row["id"] == "cmn_Hans":
            assert f["words"] is None and f["tokens_per_word"] is None
        else:
            assert f["words"] == sum(count_words(t) for t in docs) > 0
            assert f["tokens_per_word"] == pytest.approx(tokens / f["words"])
    eng = next(x for x in r["languages"] if x["id"] == "eng_Latn")
    eng_docs = [texts[("eng_Latn", d["doc_id"])] for d in r["documents"] if d["lang"] == "eng_Latn"]
    # English words by a different count: whitespace pieces that are not pure punctuation
    assert eng["fertility"]["words"] == sum(1 for t in eng_docs for w in t.split() if any(c.isalnum() for c in w))
    s = r["summary"]["fertility"]
    rows = {x["id"]: x for x in r["languages"]}
    langs = list(rows)
    assert s["tokens_per_byte"]["spearman"]["value"] == pytest.approx(
        _spearman(
            [rows[k]["fertility"]["tokens_per_byte"] for k in langs], [rows[k]["rel_delta_bpb"]["value"] for k in langs]
        )
    )
    spaced = [k for k in langs if k != "cmn_Hans"]
    assert s["tokens_per_word"]["languages"] == spaced and s["not_applicable"] == ["cmn_Hans"]
    md = audit_markdown(r)
    assert "## Tokenizer fertility" in md and "| n/a |" in md and "tokens per UTF-8 byte" in md
    assert any("tokens per word" in line and "not applicable to cmn_Hans" in line for line in audit_summary_lines(r))
    # the records read it back and write it again unchanged
    assert AuditResult.from_dict(r).to_dict()["languages"] == r["languages"]


def test_an_audit_json_without_fertility_still_reads_and_renders(saved_model):
    from rich.console import Console

    cfg, r = _audit(saved_model("llama"))
    old = json.loads(json.dumps(r))
    for row in old["languages"]:
        del row["fertility"]
    del old["summary"]["fertility"]
    row = LanguageRow.from_dict(old["languages"][0])
    assert row.fertility is None and "fertility" not in row.info
    assert "fertility" not in row.to_dict()
    md = audit_markdown(old)
    assert "Tokenizer fertility" not in md and "| language |" in md
    console = Console(width=200, record=True)
    console.print(audit_rich_table(old))
    assert "tok/byte" not in console.export_text()
    console = Console(width=200, record=True)
    console.print(audit_rich_table(r))
    text = console.export_text()
    assert "tok/byte" in text and "n/a" in text


def test_the_audit_command_prints_fertility(saved_model, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "audit",
        "--model",
        str(saved_model("llama")),
        "--langs",
        "eng,cmn_Hans,heb",
        "--max-tokens",
        "60",
        "--min-docs",
        "5",
    ]
    argv += ["--scheme", "w4g32", "--n-boot", "50", "--window", "128", "--out", str(out)]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "tok/byte" in stdout and "tokens per UTF-8 byte" in stdout
    data = json.loads((out / "audit.json").read_text())
    assert all("tokens_per_byte" in row["fertility"] for row in data["languages"])
