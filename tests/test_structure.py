"""The package's shape: a one-way import graph, one document selection, configs built of shared parts."""

from __future__ import annotations

import ast
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from quant_disparity.config import AuditConfig, ModelRuntime
from quant_disparity.corpus import CorpusSelection, load_udhr, select_documents
from quant_disparity.corpus.selection import first_sentence
from quant_disparity.errors import AmbiguousLanguage, LanguageError, UnknownLanguage, UserError
from quant_disparity.evaluate import DocTotals, TokenScores
from quant_disparity.experiments.spec import parse_spec
from quant_disparity.locate import LocateConfig
from quant_disparity.models.loading import FALLBACK_MAX_LENGTH, max_length_of

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "quant_disparity"


def _imports() -> dict[str, set[str]]:
    """module -> the package modules it imports, at module level or inside functions."""
    mods = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    edges = {}
    for name, p in mods.items():
        pkg = name if p.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                deps.add(sub if sub in mods else target)
        edges[name] = {d for d in deps if d in mods and d != name}
    return edges


def test_the_import_graph_has_no_cycle():
    edges = _imports()
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        for d in sorted(edges[m]):
            assert d not in path, "import cycle: " + " -> ".join(path[path.index(d) :] + [d])
            if d not in done:
                visit(d, path + [d])
        done.add(m)

    for m in sorted(edges):
        visit(m, [m])


def test_lower_layers_do_not_import_upper_ones():
    upper = {
        "quant_disparity.experiments",
        "quant_disparity.cli",
        "quant_disparity.audit",
        "quant_disparity.locate",
        "quant_disparity.inputs",
        "quant_disparity.config",
    }
    for m, deps in _imports().items():
        if m.split(".")[1:2] in (["corpus"], ["evaluate"], ["models"], ["quant"], ["errors"], ["registry"], ["_io"]):
            bad = [d for d in deps if any(d == u or d.startswith(u + ".") for u in upper)]
            assert not bad, f"{m} imports {bad}"


def test_corpus_imports_no_model_library():
    code = "import sys, quant_disparity.corpus; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def _words(docs):
    """A stand-in tokenizer: one token per word."""
    return [list(range(len(d.text.split()))) for d in docs]


def test_selection_takes_whole_documents_up_to_the_cap_and_the_minimum():
    corpus = load_udhr()
    one = select_documents(corpus, CorpusSelection(langs=("eng",), max_tokens=1), _words)
    assert len(one.docs["eng_Latn"]) == 1
    three = select_documents(corpus, CorpusSelection(langs=("en", "eng"), max_tokens=1, min_docs=3), _words)
    assert three.langs == ["eng_Latn"] and len(three.docs["eng_Latn"]) == 3
    assert three.all_tokens() == _words(three.documents())
    every = select_documents(corpus, CorpusSelection(langs=("eng",), max_tokens=0), _words)
    assert len(every.docs["eng_Latn"]) == len(corpus.documents("eng_Latn"))


def test_selection_filters_ids_and_cuts_first_sentences():
    corpus = load_udhr()
    sel = CorpusSelection(langs=("eng",), max_tokens=0, docs=("a01", "a02"), first_sentence=True)
    chosen = select_documents(corpus, sel, _words)
    assert [d.id for d in chosen.documents()] == ["a01", "a02"]
    full = {d.id: d.text for d in corpus.documents("eng_Latn")}
    assert [d.text for d in chosen.documents()] == [first_sentence(full["a01"]), first_sentence(full["a02"])]
    with pytest.raises(UserError, match="none of the documents"):
        select_documents(corpus, CorpusSelection(langs=("eng",), docs=("nope",)), _words)


def test_configs_share_their_parts_and_keep_flat_keys():
    audit = AuditConfig(langs=("eng",), max_tokens=7, device="cpu")
    locate = LocateConfig(langs=("eng",), max_tokens=7)
    assert isinstance(audit.selection, CorpusSelection) and isinstance(locate.selection, CorpusSelection)
    assert isinstance(audit.runtime, ModelRuntime)
    assert audit.max_tokens == audit.selection.max_tokens == 7 and audit.corpus == "udhr"
    assert locate.selection.split == "select" and audit.selection.split == "all"
    assert list(audit.to_dict())[:5] == ["model", "scheme", "plan", "langs", "corpus"]
    assert AuditConfig.from_toml(audit.to_toml()) == audit
    with pytest.raises(TypeError, match="selection"):
        AuditConfig(selection=CorpusSelection())
    with pytest.raises(AttributeError):
        audit.nonexistent


def test_locate_config_checks_what_it_shares_with_the_audit():
    with pytest.raises(UserError, match="--max-tokens must be >= 0"):
        LocateConfig(max_tokens=-1)
    with pytest.raises(UserError, match="no languages given"):
        LocateConfig(langs=())


def test_language_errors_are_typed():
    corpus = load_udhr()
    with pytest.raises(LanguageError, match="has no language"):
        corpus.resolve("zzq")
    from quant_disparity.corpus.languages import _aliases, resolve_language

    ambiguous = next(alias for alias, ids in _aliases().items() if len(ids) > 1)
    with pytest.raises(AmbiguousLanguage):
        resolve_language(ambiguous)
    with pytest.raises(UnknownLanguage):
        resolve_language("")


SPEC = """name = "x"
[corpus]
split = "all"
langs = {langs}
[grid]
models = ["gemma-3-270m"]
schemes = ["w4g128"]
[grid.plans]
none = "{{scheme}}:*"
"""


def test_a_spec_error_about_a_language_points_at_langs():
    with pytest.raises(UserError, match=r"^<spec>:4: corpus 'udhr' has no language 'zzq'"):
        parse_spec(SPEC.format(langs='["zzq"]'))
    with pytest.raises(UserError, match=r"^<spec>:2: corpus 'udhr' has no version"):
        parse_spec(SPEC.format(langs='["deu/nope"]'))


def test_doc_totals_sum_tokens_per_document():
    docs = torch.tensor([0, 2, 2, 0, 2])
    scores = TokenScores(
        nll=torch.tensor([1.0, 2, 3, 4, 5], dtype=torch.float64),
        kl=torch.tensor([0.5, 0, 1, 0, 1], dtype=torch.float64),
        top1_agree=torch.tensor([True, False, True, True, True]),
    )
    totals = DocTotals(3)
    totals.add(docs, scores)
    assert totals.nll.tolist() == [5.0, 0.0, 10.0]
    assert totals.kl.tolist() == [0.5, 0.0, 2.0]
    assert totals.top1.tolist() == [2.0, 0.0, 2.0]
    nll_only = DocTotals(3, compared=False)
    nll_only.add_nll(docs, scores.nll)
    assert nll_only.nll.tolist() == [5.0, 0.0, 10.0] and nll_only.kl is None


def test_a_model_without_a_stated_context_length_gets_the_logged_fallback(caplog):
    with caplog.at_level(logging.INFO, logger="quant_disparity.models"):
        assert max_length_of(SimpleNamespace(model_type="bloom")) == FALLBACK_MAX_LENGTH
    assert "no context length" in caplog.text
    assert max_length_of(SimpleNamespace(max_position_embeddings=512)) == 512
