"""Writing-system detection (ISO 15924) from text, using fontTools' Unicode script database."""

from __future__ import annotations

import collections
from collections.abc import Iterable

from fontTools import unicodedata as fut


def detect_script(texts: Iterable[str], max_chars: int = 20000) -> str:
    """Majority ISO 15924 script of the letters in ``texts``.

    Han mixed with kana (at least 5 % of letters) is Japanese, ``Jpan``; Hangul at least as frequent as
    Han is ``Hang``. Common and inherited characters (digits, punctuation, combining marks) do not count.
    Returns ``Zyyy`` when there are no letters.
    """
    counts: collections.Counter[str] = collections.Counter()
    seen = 0
    for text in texts:
        for ch in text:
            if ch.isalpha() or "\u3040" <= ch <= "\u30ff":
                counts[fut.script(ch)] += 1
                seen += 1
        if seen >= max_chars:
            break
    for generic in ("Zyyy", "Zinh", "Zzzz"):
        counts.pop(generic, None)
    if not counts:
        return "Zyyy"
    kana = counts["Hira"] + counts["Kana"]
    if kana and kana >= 0.05 * sum(counts.values()):
        return "Jpan"
    if counts["Hang"] and counts["Hang"] >= counts["Hani"]:
        return "Hang"
    return counts.most_common(1)[0][0]


#: Scripts whose text legitimately mixes in others: Japanese writes Han and kana, Korean may write Han.
_SCRIPT_FAMILY = {"Jpan": frozenset({"Hani", "Hira", "Kana"}), "Hang": frozenset({"Hang", "Hani"})}


def script_share(text: str, script: str) -> tuple[int, int]:
    """``(letters of text in script, letters)``, letters counted as :func:`detect_script` counts them.

    ``script`` is an ISO 15924 code as :func:`detect_script` returns it (``Jpan`` counts Han and kana,
    ``Hang`` counts Hangul and Han)."""
    family = _SCRIPT_FAMILY.get(script, frozenset({script}))
    inside = letters = 0
    for ch in text:
        if ch.isalpha() or "\u3040" <= ch <= "\u30ff":
            s = fut.script(ch)
            if s in ("Zyyy", "Zinh", "Zzzz"):
                continue
            letters += 1
            inside += s in family
    return inside, letters
