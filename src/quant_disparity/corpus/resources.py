"""How well-resourced a language is, from the reference tables shipped in ``data/resources``.

Every measure is looked up by ISO 639-3 code. When a table has only the macrolanguage (Common Crawl and
Wikipedia list Arabic as ``ara``, not ``arb``), the macrolanguage's value is used and ``via`` records it.
See ``data/resources/SOURCES.md`` for origin, licence and caveats of each table.
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import asdict, dataclass
from importlib import resources as importlib_resources

from iso639 import Lang
from iso639.exceptions import DeprecatedLanguageValue, InvalidLanguageValue

_PKG = "quant_disparity.corpus"

#: Resource measures a user can name (e.g. for correlations); value: (field, description).
MEASURES = {
    "joshi_class": "Joshi et al. (2020) class, 0 (left-behind) to 5 (winners)",
    "cc_pct": "share of Common Crawl CC-MAIN-2026-17 pages, percent",
    "fineweb2_bytes": "FineWeb-2 train UTF-8 bytes (kept data, all scripts)",
    "wiki_articles": "Wikipedia articles (active editions, 2025-09)",
}


@dataclass(frozen=True)
class Resources:
    joshi_class: int | None = None
    joshi_via: str | None = None
    cc_pct: float | None = None
    cc_via: str | None = None
    fineweb2_bytes: int | None = None
    fineweb2_via: str | None = None
    wiki_articles: int | None = None
    wiki_via: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def get(self, measure: str) -> float | None:
        if measure not in MEASURES:
            from ..errors import UserError, did_you_mean

            raise UserError(
                f"unknown resource measure {measure!r}{did_you_mean(measure, MEASURES)}",
                f"use one of {', '.join(MEASURES)}",
            )
        value = getattr(self, measure)
        return None if value is None else float(value)


def _open(name: str) -> io.TextIOWrapper:
    # csv wants newline="" (a Traversable's text open() takes no newline argument)
    raw = importlib_resources.files(_PKG).joinpath("data", "resources", name).open("rb")
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


@functools.cache
def _tables() -> dict[str, dict[str, float]]:
    joshi: dict[str, float] = {}
    # QUOTE_NONE: one row has an unmatched double quote (see SOURCES.md).
    with _open("joshi2020_lang2tax_iso639-3_distals.csv") as f:
        for row in csv.reader(f, quoting=csv.QUOTE_NONE):
            if len(row) >= 2 and row[1].strip().isdigit():
                joshi[row[0].strip()] = int(row[1])
    cc: dict[str, float] = {}
    with _open("commoncrawl_languages_CC-MAIN-2026-17.csv") as f:
        for rec in csv.DictReader(f):
            cc[rec["primary_language"]] = float(rec["%pages/crawl"])
    fw: dict[str, float] = {}
    with _open("fineweb2-language-distribution.csv") as f:
        for rec in csv.DictReader(f):
            if rec["split"] == "train" and not rec["subset"].endswith("_removed"):
                fw[rec["code"]] = fw.get(rec["code"], 0) + int(rec["utf8_bytes"])
    wiki: dict[str, float] = {}
    with _open("wikipedia_editions_2025-09.csv") as f:
        for rec in csv.DictReader(f):
            code = rec["iso639_3_derived"]
            if code and rec["status"] == "active" and rec["articles"].isdigit():
                wiki[code] = wiki.get(code, 0) + int(rec["articles"])
    return {"joshi": joshi, "cc": cc, "fw": fw, "wiki": wiki}


@functools.cache
def macrolanguage(iso639_3: str) -> str | None:
    """The ISO 639-3 macrolanguage that contains ``iso639_3`` (``arb`` -> ``ara``), if any."""
    try:
        macro = Lang(iso639_3).macro()
    except (InvalidLanguageValue, DeprecatedLanguageValue, TypeError, ValueError):
        return None
    return macro.pt3 if macro is not None and macro.pt3 else None


def _lookup(table: dict[str, float], code: str) -> tuple[float | None, str | None]:
    if code in table:
        return table[code], code
    macro = macrolanguage(code)
    if macro and macro in table:
        return table[macro], macro
    return None, None


@functools.cache
def resources_for(iso639_3: str) -> Resources:
    t = _tables()
    joshi, joshi_via = _lookup(t["joshi"], iso639_3)
    cc, cc_via = _lookup(t["cc"], iso639_3)
    fw, fw_via = _lookup(t["fw"], iso639_3)
    wiki, wiki_via = _lookup(t["wiki"], iso639_3)
    return Resources(
        joshi_class=None if joshi is None else int(joshi),
        joshi_via=joshi_via,
        cc_pct=cc,
        cc_via=cc_via,
        fineweb2_bytes=None if fw is None else int(fw),
        fineweb2_via=fw_via,
        wiki_articles=None if wiki is None else int(wiki),
        wiki_via=wiki_via,
    )
