"""Language ids, aliases and metadata.

A language id is ``xxx_Scrp``: ISO 639-3 code + ISO 15924 script (the FLORES-200 convention), e.g.
``heb_Hebr``, ``cmn_Hans``. Users may write any unambiguous alias: ``he``, ``heb``, ``heb_Hebr``,
``HEB_hebr``. An alias that fits several ids (``zh``: Simplified or Traditional?) is an error that lists them.
"""

from __future__ import annotations

import collections
import csv
import functools
import io
import re
from dataclasses import dataclass, field
from importlib import resources as importlib_resources

from iso639 import Lang
from iso639.exceptions import DeprecatedLanguageValue, InvalidLanguageValue

from ..errors import AmbiguousLanguage, UnknownLanguage, did_you_mean
from .resources import Resources, resources_for

_ID_RE = re.compile(r"^([a-zA-Z]{3})_([a-zA-Z]{4})$")

#: Scripts written right to left (ISO 15924).
RTL_SCRIPTS = frozenset({"Arab", "Hebr", "Syrc", "Thaa", "Nkoo", "Adlm", "Mand", "Samr", "Rohg", "Yezi"})


@dataclass(frozen=True)
class LanguageInfo:
    id: str
    iso639_3: str
    script: str
    name: str
    direction: str = "ltr"
    resources: Resources = field(default_factory=Resources)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "iso639_3": self.iso639_3,
            "script": self.script,
            "name": self.name,
            "direction": self.direction,
            **self.resources.to_dict(),
        }


@dataclass(frozen=True)
class UdhrVersion:
    lang_id: str
    udhr_code: str
    primary: bool
    name: str
    bcp47: str
    direction: str
    chars: int
    bytes: int


def normalize_id(text: str) -> str | None:
    """``'HEB_hebr'`` -> ``'heb_Hebr'``; None when ``text`` is not of the ``xxx_Scrp`` shape."""
    m = _ID_RE.match(text.strip())
    if not m:
        return None
    return f"{m.group(1).lower()}_{m.group(2).title()}"


@functools.cache
def udhr_versions() -> tuple[UdhrVersion, ...]:
    path = importlib_resources.files("quant_disparity.corpus").joinpath("data", "udhr_languages.csv")
    with io.TextIOWrapper(path.open("rb"), encoding="utf-8", newline="") as f:  # csv wants newline=""
        return tuple(
            UdhrVersion(
                lang_id=row["lang_id"],
                udhr_code=row["udhr_code"],
                primary=row["primary"] == "1",
                name=row["name"],
                bcp47=row["bcp47"],
                direction=row["direction"],
                chars=int(row["chars"]),
                bytes=int(row["bytes"]),
            )
            for row in csv.DictReader(f)
        )


@functools.cache
def _known() -> dict[str, UdhrVersion]:
    """Primary UDHR version per language id: the languages the bundled corpus knows by name."""
    return {v.lang_id: v for v in udhr_versions() if v.primary}


@functools.cache
def _aliases() -> dict[str, frozenset[str]]:
    """alias (lower case) -> language ids it may mean."""
    table: dict[str, set[str]] = collections.defaultdict(set)
    for lang_id, v in _known().items():
        iso = lang_id.split("_")[0]
        table[lang_id.lower()].add(lang_id)
        table[iso].add(lang_id)
        if v.bcp47:
            table[v.bcp47.lower()].add(lang_id)
        try:
            pt1 = Lang(iso).pt1
        except InvalidLanguageValue:
            pt1 = ""
        if pt1:
            table[pt1].add(lang_id)
    return {k: frozenset(v) for k, v in table.items()}


def _iso_name(iso: str) -> str:
    try:
        return Lang(iso).name
    except (InvalidLanguageValue, DeprecatedLanguageValue):
        return iso


def _iso3(code: str) -> str | None:
    """ISO 639-3 code for a 2- or 3-letter ISO 639 code, or None."""
    try:
        lang = Lang(code.lower())
    except DeprecatedLanguageValue as e:  # a retired code: its replacement when ISO names one (iw -> heb)
        return _iso3(e.change_to) if e.change_to and e.change_to != code.lower() else None
    except (InvalidLanguageValue, TypeError):
        return None
    return lang.pt3 or None


def language_info(lang_id: str) -> LanguageInfo:
    """Metadata for a canonical id (bundled names where known, ISO 639 names otherwise)."""
    iso, script = lang_id.split("_")
    v = _known().get(lang_id)
    direction = v.direction if v else ("rtl" if script in RTL_SCRIPTS else "ltr")
    if direction not in ("ltr", "rtl"):
        direction = "ltr"
    return LanguageInfo(
        id=lang_id,
        iso639_3=iso,
        script=script,
        name=v.name if v else _iso_name(iso),
        direction=direction,
        resources=resources_for(iso),
    )


def resolve_language(text: str, *, known_only: bool = False, script: str | None = None) -> str:
    """Canonical ``xxx_Scrp`` id for ``text``.

    ``known_only``: only ids of the bundled corpus are accepted. ``script``: used when ``text`` is a bare
    ISO code that the bundled table does not know (user corpora pass the script detected from their text).
    Raises :class:`UnknownLanguage` or :class:`AmbiguousLanguage` (both user errors).
    """
    raw = text.strip()
    if not raw:
        raise UnknownLanguage("empty language id", "write an id such as heb_Hebr, heb or he")
    known = _known()
    norm = normalize_id(raw)
    if norm and norm in known:
        return norm
    candidates = _aliases().get(raw.lower())
    if candidates:
        if len(candidates) == 1:
            return next(iter(candidates))
        raise AmbiguousLanguage(
            f"language {raw!r} is ambiguous: it may mean {', '.join(sorted(candidates))}",
            "write the full id",
        )
    if not known_only:
        if norm and _iso3(norm[:3]) == norm[:3]:
            return norm
        iso = _iso3(raw)
        if iso and script:
            return f"{iso}_{script}"
    hint = (
        "run `quant-disparity languages` to list the bundled ones"
        if known_only
        else ("use an id such as heb_Hebr (ISO 639-3 + ISO 15924 script)")
    )
    raise UnknownLanguage(f"unknown language {raw!r}{did_you_mean(raw, known)}", hint)
