"""Tokenizer fertility: how many tokens a model's tokenizer spends on a language's text, and whether the damage
quantization does to a language follows it.

Per language, on the very documents an audit scores (ratios of sums, never means of per-document ratios):

- **tokens per byte** = Σ tokens / Σ UTF-8 bytes of the document texts (the tokenizer's own tokens of the text,
  no BOS/EOS; the bytes of the whole text, also those of a first token a model without a prefix token cannot
  predict). Defined for every script.
- **tokens per word** = Σ tokens / Σ words, where a word is a maximal run of characters between separators
  (Unicode whitespace and the Ethiopic wordspace ``፡``, U+1361) that holds at least one letter or digit.
  Only for scripts that separate words: :data:`NO_WORD_SEPARATORS` lists the scripts written without spaces
  between words (Chinese, Japanese, Thai, ...), for which it is *not applicable* (a whitespace count there
  counts sentences or phrases, not words).

Across languages, the Spearman correlation of relative Δbpb with each fertility measure, with the same
two-stage (languages x documents) bootstrap interval as the resource-level correlation
(:func:`.stats.correlation`): languages are resampled, each contributes its own document-level replicate of
relative Δbpb. A language's fertility enters as its value on the scored documents (its document-level
variation is small next to the spread between languages and is not resampled).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .stats import LanguageStats, correlation

#: ISO 15924 scripts written without separators between words: a "tokens per word" is not defined for them.
#: Han (simplified, traditional, generic), Japanese and its kana, and the scriptio continua of South-East Asia
#: and Tibet (Thai, Lao, Khmer, Myanmar, Tibetan, Balinese, Javanese, Tai Tham, Tai Le, New Tai Lue).
NO_WORD_SEPARATORS = frozenset(
    {"Hani", "Hans", "Hant", "Jpan", "Hira", "Kana", "Thai", "Laoo", "Khmr", "Mymr", "Tibt", "Bali", "Java", "Lana"}
    | {"Tale", "Talu"}
)

#: Word separators: Unicode whitespace and the Ethiopic wordspace (Amharic writes ``፡`` between words).
_SEPARATORS = re.compile(r"[\s\u1361]+")

#: The audit draws the fertility correlations' language resamples from its own stream, ``(seed, this)``, so that they
#: neither depend on nor change any other number of the audit.
FERTILITY_STREAM = 0xF3

#: The fertility measures, in report order, with what each is.
FERTILITY_MEASURES = {
    "tokens_per_byte": "tokens per UTF-8 byte of the scored documents (every script)",
    "tokens_per_word": "tokens per word of the scored documents (scripts that separate words)",
}


def count_words(text: str) -> int:
    """Words of ``text``: runs between whitespace or ``፡`` that hold at least one letter or digit."""
    return sum(1 for w in _SEPARATORS.split(text) if any(c.isalnum() for c in w))


def separates_words(script: str) -> bool:
    """Whether a script is written with separators between words (so that tokens per word is defined)."""
    return script not in NO_WORD_SEPARATORS


@dataclass(frozen=True)
class Fertility:
    """One language's fertility on a set of documents (sums over them)."""

    script: str
    tokens: int
    bytes: int
    words: int | None  # None: the script separates no words

    @property
    def tokens_per_byte(self) -> float | None:
        return self.tokens / self.bytes if self.bytes else None

    @property
    def tokens_per_word(self) -> float | None:
        return self.tokens / self.words if self.words else None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {
            "tokens": self.tokens,
            "bytes": self.bytes,
            "words": self.words,
            "tokens_per_byte": self.tokens_per_byte,
            "tokens_per_word": self.tokens_per_word,
        }
        if self.words is None:
            out["tokens_per_word_note"] = f"not applicable: {self.script} is written without spaces between words"
        return out


def language_fertility(script: str, texts: Sequence[str], n_tokens: Sequence[int]) -> Fertility:
    """Fertility of documents ``texts`` (of one language, in ``script``) that tokenize to ``n_tokens`` tokens."""
    if len(texts) != len(n_tokens):
        raise ValueError(f"{len(texts)} documents but {len(n_tokens)} token counts")
    words = sum(count_words(t) for t in texts) if separates_words(script) else None
    return Fertility(script, int(sum(n_tokens)), sum(len(t.encode("utf-8")) for t in texts), words)


def fertility_summary(
    per_lang: Sequence[LanguageStats], fertility: Mapping[str, Fertility], rng: np.random.Generator
) -> dict:
    """Spearman correlation of relative Δbpb with each fertility measure across languages, with its interval
    (:func:`.stats.correlation`; a measure a language lacks leaves that language out of that correlation)."""
    out: dict[str, Any] = {}
    for measure, description in FERTILITY_MEASURES.items():
        values = {lang: getattr(f, measure) for lang, f in fertility.items()}
        out[measure] = {"description": description, **correlation(per_lang, values, "rel_delta_bpb", rng)}
    out["not_applicable"] = sorted(lang for lang, f in fertility.items() if f.words is None)
    out["scripts_without_word_separators"] = sorted(NO_WORD_SEPARATORS)
    return out


__all__ = [
    "FERTILITY_MEASURES",
    "FERTILITY_STREAM",
    "NO_WORD_SEPARATORS",
    "Fertility",
    "count_words",
    "fertility_summary",
    "language_fertility",
    "separates_words",
]
