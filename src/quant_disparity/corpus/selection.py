"""Which documents are scored: the corpus selection every command shares, and the one function that applies it.

A selection names a corpus, a split, the languages, and a token cap per language; documents are taken whole,
in corpus order (:func:`.documents.take_until_tokens`). The audit, ``locate``, experiment specs and the
benchmarks all select through :func:`select_documents`. Tokenizing is passed in (a function of a list of
documents), so that this package never imports a model library.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import UserError
from .documents import Corpus, Document, filter_split, take_until_tokens
from .readers import load_corpus

#: The default panel: spans Joshi classes 2-5 and eight scripts.
DEFAULT_PANEL = (
    "eng_Latn",
    "deu_Latn",
    "fra_Latn",
    "rus_Cyrl",
    "cmn_Hans",
    "jpn_Jpan",
    "arb_Arab",
    "heb_Hebr",
    "hin_Deva",
    "swh_Latn",
    "yor_Latn",
    "amh_Ethi",
)

#: Token ids of each document, in the order given.
Tokenize = Callable[[Sequence[Document]], list[list[int]]]

# Latin-style marks end a sentence before a space; CJK, Devanagari, Ethiopic and Arabic marks end it outright.
_SENTENCE_END = re.compile(r"^.*?(?:[.!?](?=\s|$)|[。！？।።؟۔])", re.S)


@dataclass(frozen=True)
class CorpusSelection:
    """What to score: ``max_tokens`` per language (0 = every document), at least ``min_docs`` documents each.

    ``flores_split`` and ``sentences_per_doc`` configure FLORES-style corpus directories; ``docs`` (only these
    document ids) and ``first_sentence`` (each document cut to its first sentence) are set by experiment specs.
    """

    name: str = "udhr"
    split: str = "all"
    langs: tuple[str, ...] = DEFAULT_PANEL
    max_tokens: int = 2048
    min_docs: int = 1  # at least this many documents per language, past max_tokens if need be
    first_sentence: bool = False
    docs: tuple[str, ...] = ()
    flores_split: str = "devtest"
    sentences_per_doc: int = 10


@dataclass
class Selection:
    """The documents chosen per language (in corpus order) and their tokens."""

    corpus: Corpus
    langs: list[str]  # the corpus's keys of the selection's languages, duplicates removed
    docs: dict[str, list[Document]]
    tokens: dict[str, list[list[int]]]

    def documents(self) -> list[Document]:
        """Every chosen document, language by language."""
        return [d for lang in self.langs for d in self.docs[lang]]

    def all_tokens(self) -> list[list[int]]:
        """The tokens of :meth:`documents`, in the same order."""
        return [t for lang in self.langs for t in self.tokens[lang]]


def open_corpus(selection: CorpusSelection) -> Corpus:
    return load_corpus(
        selection.name, flores_split=selection.flores_split, sentences_per_doc=selection.sentences_per_doc
    )


def resolve_langs(corpus: Corpus, langs: Sequence[str]) -> list[str]:
    """The corpus keys of ``langs`` (aliases resolved), each once, in the order given."""
    return list(dict.fromkeys(corpus.resolve(lang) for lang in langs))


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (up to its first sentence-final mark), else its first line."""
    m = _SENTENCE_END.match(text.strip())
    return m.group(0).strip() if m else text.strip().splitlines()[0]


def candidates(corpus: Corpus, lang: str, selection: CorpusSelection) -> list[Document]:
    """The documents of ``lang`` the cap chooses from: its split, the named ids, cut to a first sentence."""
    pool = filter_split(corpus.documents(lang), selection.split)
    if selection.docs:
        pool = [d for d in pool if d.id in selection.docs]
        if not pool:
            raise UserError(f"{lang}: none of the documents {list(selection.docs)} is in split {selection.split!r}")
    if selection.first_sentence:
        pool = [Document(d.lang, d.id, first_sentence(d.text)) for d in pool]
    return pool


def select_documents(corpus: Corpus, selection: CorpusSelection, tokenize: Tokenize) -> Selection:
    """Apply ``selection`` to ``corpus``: per language, whole documents up to the token cap."""
    langs = resolve_langs(corpus, selection.langs)
    docs, tokens = {}, {}
    for lang in langs:
        pool = candidates(corpus, lang, selection)
        pool_tokens = tokenize(pool)
        counts = {d.id: len(t) for d, t in zip(pool, pool_tokens)}
        chosen = take_until_tokens(pool, selection.max_tokens or None, lambda d: counts[d.id], selection.min_docs)
        docs[lang] = chosen
        tokens[lang] = pool_tokens[: len(chosen)]
    return Selection(corpus=corpus, langs=langs, docs=docs, tokens=tokens)
