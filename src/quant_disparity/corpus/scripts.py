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
