"""Documents, corpora, splits and token-capped selection."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..errors import LanguageError, UnknownLanguage, UserError, did_you_mean

_log = logging.getLogger("quant_disparity.corpus")

#: A token-capped selection that holds more than this many times its cap gets a warning (documents are never cut,
#: so one huge document can be scored in full under a small cap).
OVERSHOOT_FACTOR = 10

#: Split names. ``select`` is for choosing things (search, sensitivity scans), ``heldout`` for verdicts.
SPLITS = ("all", "select", "heldout")


@dataclass(frozen=True)
class Document:
    lang: str  # canonical language id (``heb_Hebr``) or ``id/variant`` for a second version
    id: str  # stable within the corpus; aligned ids (same article in each language) share it
    text: str

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8"))

    @property
    def n_chars(self) -> int:
        return len(self.text)

    @property
    def split(self) -> str:
        return split_of(self.id)


def split_of(doc_id: str) -> str:
    """Deterministic split of a document id: about one third ``select``, the rest ``heldout``.

    It hashes the id alone, so aligned documents (same id in every language) land in the same split.
    """
    h = int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big")
    return "select" if h % 3 == 0 else "heldout"


def base_language(lang: str) -> str:
    """``deu_Latn/deu_1901`` -> ``deu_Latn``."""
    return lang.split("/", 1)[0]


@dataclass(frozen=True)
class Corpus:
    """Documents grouped by language, in corpus order."""

    name: str
    docs: dict[str, tuple[Document, ...]]
    source: str = ""
    license: str = ""
    digest: str = field(default="")

    def __post_init__(self):
        if not self.digest:
            object.__setattr__(self, "digest", corpus_digest(d for docs in self.docs.values() for d in docs))

    @property
    def languages(self) -> list[str]:
        return list(self.docs)

    def documents(self, lang: str) -> tuple[Document, ...]:
        return self.docs[lang]

    def resolve(self, lang: str) -> str:
        """The key of this corpus meaning ``lang`` (any alias, ``id/variant`` too).

        Raises :class:`LanguageError` for a language it does not hold (or an ambiguous id), and a plain
        :class:`UserError` for a version of a language it holds but not that version."""
        from .languages import resolve_language

        if lang in self.docs:
            return lang
        base, _, variant = lang.strip().partition("/")
        try:
            lang_id = resolve_language(base)
        except UnknownLanguage:  # an id the bundled table lacks may still be a key of this corpus
            lang_id = None
        key = f"{lang_id}/{variant}" if variant else lang_id
        if key in self.docs:
            return key
        if lang_id and variant:
            versions = [k for k in self.docs if k.startswith(lang_id + "/")]
            raise UserError(
                f"corpus {self.name!r} has no version {lang!r}",
                f"its versions of {lang_id}: {', '.join(versions)}" if versions else f"{lang_id} has one version",
            )
        raise LanguageError(
            f"corpus {self.name!r} has no language {lang!r}{did_you_mean(lang, self.docs)}",
            "run `quant-disparity languages` (with the same --corpus) to list what it offers",
        )


def corpus_digest(docs: Iterable[Document]) -> str:
    h = hashlib.sha256()
    for d in docs:
        for part in (d.lang, d.id, d.text):
            b = part.encode("utf-8")
            h.update(len(b).to_bytes(8, "big"))
            h.update(b)
    return h.hexdigest()


def filter_split(docs: Sequence[Document], split: str) -> list[Document]:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    return list(docs) if split == "all" else [d for d in docs if d.split == split]


def take_until_tokens(
    docs: Sequence[Document], max_tokens: int | None, count_tokens: Callable[[Document], int], min_docs: int = 1
) -> list[Document]:
    """Whole documents in corpus order until ``max_tokens`` is reached and ``min_docs`` are taken.

    A document is taken while the running total is below the cap, so the last one may cross it; at
    least ``min_docs`` documents (or all there are) are always taken, past the cap if need be: a tokenizer that
    spends many tokens per byte on a script would otherwise leave that language too few documents for an
    interval. ``None`` takes everything. A selection of more than ``OVERSHOOT_FACTOR`` times the cap logs a
    warning (logger ``quant_disparity.corpus``).
    """
    if min_docs < 1:
        raise UserError(f"min_docs must be >= 1, got {min_docs}")
    if max_tokens is None:
        return list(docs)
    out: list[Document] = []
    total = 0
    for d in docs:
        if total >= max_tokens and len(out) >= min_docs:
            break
        out.append(d)
        total += count_tokens(d)
    if max_tokens > 0 and total > OVERSHOOT_FACTOR * max_tokens:
        big = max(out, key=count_tokens)
        _log.warning(
            f"{out[0].lang}: whole-document selection takes {total:,} tokens under max_tokens {max_tokens:,} "
            f"(over {OVERSHOOT_FACTOR}x; document {big.id!r} alone has {count_tokens(big):,}); documents are "
            "never cut: split the corpus into smaller documents (blank lines in a txt dir, a FLORES dir's "
            "sentences_per_doc), or pass --max-tokens 0 (max_tokens = 0 in a spec) to score everything on purpose"
        )
    return out
