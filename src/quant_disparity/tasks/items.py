"""The held-out articles every corpus-built task draws on, and where an article is cut into prompt and parts.

Items are the ids of the documents in the ``heldout`` split that every requested language has (UDHR: the
same article in each language), in corpus order, so that every language answers the same items.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..corpus import Corpus, Document
from ..errors import UserError

#: A cut looks back this fraction of the text for a space to fall on (scripts without spaces: cut at the character).
CUT_LOOKBACK = 0.1


def heldout_items(corpus: Corpus, langs: Sequence[str], task: str, least: int = 1) -> list[str]:
    """Ids of the held-out documents all of ``langs`` have, in corpus order; a UserError if fewer than ``least``."""
    per_lang = {lang: [d.id for d in corpus.documents(lang) if d.split == "heldout"] for lang in langs}
    for lang, ids in per_lang.items():
        if len(ids) < least:
            raise UserError(
                f"task {task!r} has no items in {lang}: {len(ids)} held-out documents, needs at least {least}",
                "leave that language out of --langs or use a corpus with more documents in it",
            )
    common = set.intersection(*(set(ids) for ids in per_lang.values())) if per_lang else set()
    first = next(iter(per_lang.values()), [])
    items = [i for i in first if i in common]
    if len(items) < least:
        raise UserError(
            f"task {task!r}: only {len(items)} held-out document ids are shared by every language, needs {least}",
            "the task compares languages on the same items: use aligned documents (same id in each language)",
        )
    return items


def cut(text: str, frac: float) -> int:
    """Character position near ``frac`` of ``text``: the last whitespace within :data:`CUT_LOOKBACK` of the text
    before it (so the later part starts with the space, as a continuation does), else the position itself."""
    target = round(len(text) * frac)
    floor = max(1, target - max(1, round(len(text) * CUT_LOOKBACK)))
    for i in range(target, floor - 1, -1):
        if text[i : i + 1].isspace():
            return i
    return target


def halves(doc: Document) -> tuple[str, str, str]:
    """``(first half, third quarter, rest)`` of a document's text, cut by :func:`cut`."""
    a, b = cut(doc.text, 0.5), cut(doc.text, 0.75)
    if not 0 < a < b:
        b = max(b, a + 1)
    return doc.text[:a], doc.text[a:b], doc.text[b:]
