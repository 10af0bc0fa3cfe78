"""User-facing errors.

Every problem a user can fix (bad model name, language, scheme, corpus, output directory ...) is raised
as :class:`UserError` with one line saying what is wrong and how to fix it. The CLI prints that line and
exits with status 2; library callers can catch it like any exception.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """A problem in the user's input. ``str(err)`` is a single line naming the problem and the fix."""

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        text = message if not hint else f"{message} — {hint}"
        super().__init__(" ".join(text.split()))


class LanguageError(UserError):
    """A language id that names no language (:class:`UnknownLanguage`) or several (:class:`AmbiguousLanguage`),
    or one the corpus at hand does not hold."""


class UnknownLanguage(LanguageError):
    """A language id that matches no known language (an empty id included)."""


class AmbiguousLanguage(LanguageError):
    """A short language id that may mean more than one language (the user must write the full id)."""


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """`` (did you mean 'a', 'b'?)`` for the closest choices, or an empty string."""
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=n, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[c] for c in difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.6)]
    if not close:
        return ""
    return " (did you mean " + ", ".join(repr(c) for c in close) + "?)"
