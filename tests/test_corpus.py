"""The bundled UDHR, language ids and metadata, resource measures, user corpora and their bad inputs."""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources as importlib_resources

import pytest

from quant_disparity.corpus import (
    DEFAULT_PANEL,
    filter_split,
    language_info,
    load_corpus,
    load_udhr,
    resolve_language,
    resources_for,
    split_of,
    take_until_tokens,
)
from quant_disparity.errors import UserError


def test_udhr_has_thirty_aligned_articles_per_version():
    c = load_udhr()
    assert len(c.languages) > 400
    for lang in c.languages:
        docs = c.documents(lang)
        assert [d.id for d in docs] == [f"a{i:02d}" for i in range(1, 31)]
        assert all(d.text.strip() for d in docs)
    eng = c.documents("eng_Latn")
    assert eng[0].text.startswith("All human beings are born free and equal in dignity and rights.")
    assert "Article" not in eng[0].text  # headings are dropped


def test_default_panel_spans_resource_classes_and_scripts():
    c = load_udhr()
    assert len(DEFAULT_PANEL) == 12 and all(lang in c.docs for lang in DEFAULT_PANEL)
    infos = [language_info(lang) for lang in DEFAULT_PANEL]
    assert {i.script for i in infos} >= {"Latn", "Cyrl", "Hans", "Jpan", "Arab", "Hebr", "Deva", "Ethi"}
    assert {i.resources.joshi_class for i in infos} == {2, 3, 4, 5}
    assert language_info("heb_Hebr").direction == "rtl" and language_info("arb_Arab").direction == "rtl"


@pytest.mark.parametrize(
    "alias,expected",
    [
        ("he", "heb_Hebr"),
        ("heb", "heb_Hebr"),
        ("heb_Hebr", "heb_Hebr"),
        ("HEB_hebr", "heb_Hebr"),
        ("ar", "arb_Arab"),
        ("arb", "arb_Arab"),
        ("ja", "jpn_Jpan"),
        ("de", "deu_Latn"),
        ("cmn_Hans", "cmn_Hans"),
        ("am", "amh_Ethi"),
        ("sw", "swh_Latn"),
    ],
)
def test_aliases(alias, expected):
    assert resolve_language(alias, known_only=True) == expected


def test_ambiguous_and_unknown_languages_are_one_line_errors():
    with pytest.raises(UserError, match=r"ambiguous.*cmn_Hans, cmn_Hant"):
        resolve_language("cmn")
    with pytest.raises(UserError, match=r"unknown language 'hebr'.*languages"):
        resolve_language("hebr", known_only=True)
    with pytest.raises(UserError, match="corpus 'udhr' has no language"):
        load_udhr().resolve("xx_Zzzz")


def test_second_versions_are_addressable():
    c = load_udhr()
    assert c.resolve("deu_Latn/deu_1901") == "deu_Latn/deu_1901"
    assert c.resolve("de") == "deu_Latn"
    with pytest.raises(UserError, match="no version"):
        c.resolve("deu_Latn/deu_1800")


def test_resource_measures_with_macrolanguage_fallback():
    arb = resources_for("arb")
    assert arb.joshi_class == 5 and arb.joshi_via == "ara" and arb.cc_via == "ara"
    cmn = resources_for("cmn")
    assert cmn.joshi_class == 5 and cmn.joshi_via == "cmn" and cmn.cc_via == "zho"
    assert resources_for("swh").cc_via == "swa" and resources_for("heb").joshi_class == 3
    assert resources_for("eng").fineweb2_bytes is None  # FineWeb-2 has no English (see SOURCES.md)
    assert resources_for("eng").cc_pct == pytest.approx(41.0204)


def test_shipped_resource_files_match_their_documented_checksums():
    root = importlib_resources.files("quant_disparity.corpus").joinpath("data", "resources")
    sums = dict(
        (name, digest) for digest, name in re.findall(r"([0-9a-f]{64})  (\S+)", root.joinpath("SOURCES.md").read_text())
    )
    shipped = [p for p in root.iterdir() if p.name.endswith(".csv")]
    assert len(shipped) == 4
    for p in shipped:
        assert hashlib.sha256(p.read_bytes()).hexdigest() == sums[p.name], p.name


def test_splits_are_deterministic_aligned_and_disjoint():
    c = load_udhr()
    for lang in ("eng_Latn", "heb_Hebr"):
        docs = c.documents(lang)
        sel, held = filter_split(docs, "select"), filter_split(docs, "heldout")
        assert len(sel) + len(held) == 30 and 6 <= len(sel) <= 14
        assert {d.id for d in sel}.isdisjoint({d.id for d in held})
    assert [d.id for d in filter_split(c.documents("eng_Latn"), "select")] == [
        d.id for d in filter_split(c.documents("heb_Hebr"), "select")
    ]
    with pytest.raises(UserError, match="unknown split"):
        filter_split(c.documents("eng_Latn"), "train")


def _split_rule(doc_id: str) -> str:
    """The documented rule, written out here: the first 8 bytes of sha256(id), big-endian, mod 3 == 0 -> select."""
    h = int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big")
    return "select" if h % 3 == 0 else "heldout"


#: UDHR articles in the select split, worked out once from the rule above (golden: a change of hash, of the
#: byte count, of the modulus or of which residue selects changes this list).
UDHR_SELECT = ["a02", "a07", "a11", "a12", "a14", "a15", "a16", "a23", "a27"]


def test_split_assignments_are_the_documented_hash_rule():
    ids = [f"a{i:02d}" for i in range(1, 31)]
    assert [i for i in ids if split_of(i) == "select"] == UDHR_SELECT
    assert [i for i in ids if _split_rule(i) == "select"] == UDHR_SELECT
    # the rule on ids of other shapes (user corpora): non-ASCII, empty, long
    for doc_id in ("x1", "doc-17", "שלום", "", "a" * 300, "flores/0123"):
        assert split_of(doc_id) == _split_rule(doc_id), doc_id
    c = load_udhr()
    for lang in ("eng_Latn", "heb_Hebr", "amh_Ethi", "cmn_Hans"):  # aligned: the same articles in every language
        assert [d.id for d in filter_split(c.documents(lang), "select")] == UDHR_SELECT
        assert [d.id for d in filter_split(c.documents(lang), "heldout")] == [i for i in ids if i not in UDHR_SELECT]


def test_split_is_about_one_third_select_over_many_ids():
    n = 6000
    selected = sum(split_of(f"doc-{i}") == "select" for i in range(n))
    # Binomial(6000, 1/3): sd = 36.5; a fixed set of ids, so this is deterministic, and 5 sd wide
    assert abs(selected - n / 3) < 5 * (n * (1 / 3) * (2 / 3)) ** 0.5
    assert {split_of(f"doc-{i}") for i in range(n)} == {"select", "heldout"}


def test_token_cap_takes_whole_documents_in_order():
    docs = load_udhr().documents("eng_Latn")
    counts = {d.id: 10 for d in docs}
    taken = take_until_tokens(docs, 25, lambda d: counts[d.id])
    assert [d.id for d in taken] == ["a01", "a02", "a03"]  # 10, 20 < 25, then 30 >= 25 stops
    assert take_until_tokens(docs, None, lambda d: 1) == list(docs)
    assert len(take_until_tokens(docs, 1, lambda d: 100)) == 1


def test_a_document_minimum_goes_past_the_cap():
    docs = load_udhr().documents("eng_Latn")
    ten = lambda d: 10
    assert [d.id for d in take_until_tokens(docs, 25, ten, min_docs=5)] == ["a01", "a02", "a03", "a04", "a05"]
    assert [d.id for d in take_until_tokens(docs, 60, ten, min_docs=5)] == [f"a0{i}" for i in range(1, 7)]
    assert len(take_until_tokens(docs[:3], 25, ten, min_docs=5)) == 3  # all there are
    with pytest.raises(UserError, match="min_docs must be >= 1"):
        take_until_tokens(docs, 25, ten, min_docs=0)


def test_corpus_digest_changes_with_content(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"lang": "he", "text": "שלום"}) + "\n")
    b = tmp_path / "b.jsonl"
    b.write_text(json.dumps({"lang": "he", "text": "שלום!"}) + "\n")
    assert load_corpus(str(a)).digest != load_corpus(str(b)).digest
    assert load_corpus(str(a)).digest == load_corpus(f"jsonl:{a}").digest


def test_jsonl_corpus(tmp_path):
    p = tmp_path / "c.jsonl"
    rows = [
        {"lang": "he", "text": "שלום עולם", "id": "x1"},
        {"lang": "heb_Hebr", "text": "בוקר טוב"},
        {"lang": "en", "text": "Good morning"},
        {"lang": "yid", "text": "גוט מאָרגן"},
    ]
    p.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n")
    c = load_corpus(str(p))
    assert set(c.languages) == {"heb_Hebr", "eng_Latn", "yid_Hebr"}  # yid: not in the bundle, script detected
    assert [d.id for d in c.documents("heb_Hebr")] == ["x1", "2"]


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", r"c.jsonl:2: not valid JSON"),
        ('["a"]', r"c.jsonl:2: expected a JSON object"),
        ('{"text": "x"}', r"c.jsonl:2: missing field 'lang'"),
        ('{"lang": "he"}', r"c.jsonl:2: missing field 'text'"),
        ('{"lang": "he", "text": "   "}', r"c.jsonl:2: empty text"),
        ('{"lang": "qqqq", "text": "abc"}', r"c.jsonl:2: unknown language 'qqqq'"),
        ('{"lang": 5, "text": "abc"}', r"c.jsonl:2: field 'lang' must be a string"),
        ('{"lang": "he", "text": "שלום", "id": "1"}', r"document id '1' appears twice"),
    ],
)
def test_jsonl_bad_input(tmp_path, line, message):
    p = tmp_path / "c.jsonl"
    p.write_text('{"lang": "he", "text": "שלום"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=message) as e:
        load_corpus(str(p))
    assert "\n" not in str(e.value)


def test_empty_and_non_utf8_corpora(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match="holds no documents"):
        load_corpus(str(empty))
    latin1 = tmp_path / "l.jsonl"
    latin1.write_bytes('{"lang": "fr", "text": "é"}'.encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_corpus(str(latin1))
    with pytest.raises(UserError, match="not found"):
        load_corpus(str(tmp_path / "missing.jsonl"))


def test_txt_directory_corpus(tmp_path):
    (tmp_path / "heb_Hebr.txt").write_text("מסמך ראשון\nשורה שנייה\n\n\nמסמך שני\n", encoding="utf-8")
    (tmp_path / "en.txt").write_text("First document.\n\nSecond.\n\nThird.", encoding="utf-8")
    c = load_corpus(str(tmp_path))
    assert [d.text for d in c.documents("heb_Hebr")] == ["מסמך ראשון\nשורה שנייה", "מסמך שני"]
    assert len(c.documents("eng_Latn")) == 3
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(UserError, match="empty file"):
        load_corpus(f"txt:{tmp_path}")


def test_flores_style_directory(tmp_path):
    d = tmp_path / "devtest"
    d.mkdir()
    (d / "heb_Hebr.devtest").write_text("\n".join(f"משפט {i}" for i in range(25)) + "\n", encoding="utf-8")
    (d / "eng_Latn.devtest").write_text("\n".join(f"Sentence {i}." for i in range(25)) + "\n", encoding="utf-8")
    c = load_corpus(f"flores:{tmp_path}", sentences_per_doc=10)
    docs = c.documents("heb_Hebr")
    assert [doc.id for doc in docs] == ["devtest-0000", "devtest-0001", "devtest-0002"]
    assert docs[0].text.count("\n") == 9 and docs[2].text.count("\n") == 4
    with pytest.raises(UserError, match="no FLORES-style files for split 'dev'"):
        load_corpus(f"flores:{tmp_path}", flores_split="dev")
    (d / "eng_Latn.devtest").write_text("one\n\nthree\n")
    with pytest.raises(UserError, match="line 2 is empty"):
        load_corpus(f"flores:{tmp_path}")
