"""Split tokenized documents into model windows so that every token is predicted exactly once.

A window is ``[prefix] + context + new``: ``prefix`` is the BOS token (when the tokenizer has one, else EOS,
else nothing), ``context`` the last ``context`` tokens of the document before ``new`` (conditioning only, not
scored) and ``new`` the tokens this window scores. The first window has no context. Without a prefix token
the document's first token cannot be predicted and is not scored, and later windows carry at least one
context token.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    doc: int  # index of the document in the caller's list
    input_ids: tuple[int, ...]
    n_scored: int  # the last n_scored tokens of input_ids are the targets scored in this window

    @property
    def first_scored_position(self) -> int:
        """Position whose output predicts the first scored token."""
        return len(self.input_ids) - self.n_scored - 1


def make_windows(doc: int, tokens: list[int], prefix: int | None, max_len: int, context: int) -> list[Window]:
    if max_len < 2:
        raise ValueError("window length must be at least 2")
    if not 0 <= context <= max_len - 2:
        raise ValueError(f"context must be in 0..{max_len - 2}, got {context}")
    pre = () if prefix is None else (prefix,)
    windows: list[Window] = []
    i = 0
    n = len(tokens)
    while i < n:
        # Without a prefix a later window needs at least one context token to predict its first new token.
        ctx_len = context if pre else max(1, context)
        ctx = tuple(tokens[max(0, i - ctx_len) : i]) if i else ()
        room = max_len - len(pre) - len(ctx)
        new = tuple(tokens[i : i + room])
        ids = pre + ctx + new
        n_scored = len(new) if (pre or ctx) else len(new) - 1
        if n_scored > 0:
            windows.append(Window(doc=doc, input_ids=ids, n_scored=n_scored))
        i += len(new)
    return windows


def n_predicted(n_tokens: int, has_prefix: bool) -> int:
    """How many tokens of a document are scored."""
    return n_tokens if has_prefix else max(0, n_tokens - 1)


def batch_windows(windows: list[Window], max_batch_tokens: int, min_fill: float = 0.8) -> list[list[Window]]:
    """Group windows, longest first, into batches of similar length.

    A batch closes when ``batch size x longest window`` would exceed ``max_batch_tokens`` or when the next
    window is shorter than ``min_fill`` of the batch's longest (so padding stays under ~20 %). The order is
    deterministic (ties broken by input order), so a run is reproducible bit for bit.
    """
    order = sorted(range(len(windows)), key=lambda k: (-len(windows[k].input_ids), k))
    batches: list[list[Window]] = []
    current: list[Window] = []
    for k in order:
        w = windows[k]
        if current:
            longest = len(current[0].input_ids)
            if (len(current) + 1) * longest > max_batch_tokens or len(w.input_ids) < min_fill * longest:
                batches.append(current)
                current = []
        current.append(w)
    if current:
        batches.append(current)
    return batches
