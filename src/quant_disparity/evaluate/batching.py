"""From documents to work: the evaluation settings, tokenizing, and the windows, batches and scoring groups
of a set of documents (:func:`prepare`), with each document's predicted tokens and bits-per-byte denominator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from ..corpus.documents import Document
from ..errors import UserError
from .windows import Window, batch_windows, make_windows, n_predicted


@dataclass(frozen=True)
class EvalSettings:
    """How documents are cut and batched. Part of every result key."""

    window: int = 1024  # tokens per forward pass, prefix and context included
    context: int = 128  # tokens of preceding text conditioning each later window of a long document
    batch_tokens: int = 4096  # padded tokens per batch
    vocab_chunk: int = 4096  # vocabulary slice of the fused head
    bucket: float = 0.8  # a batch only takes windows at least this fraction of its longest (little padding)
    score_rows: int = 1024  # consecutive batches are scored together until they hold this many tokens
    version: int = 2

    def __post_init__(self):
        if self.window < 2:
            raise UserError(f"--window must be at least 2, got {self.window}")
        if not 0 <= self.context <= self.window - 2:
            raise UserError(f"--context must be in 0..{self.window - 2}, got {self.context}")
        if self.batch_tokens < self.window:
            raise UserError(f"--batch-tokens ({self.batch_tokens}) must be at least --window ({self.window})")
        if not 0 <= self.bucket <= 1:
            raise UserError(f"bucket must be in [0, 1], got {self.bucket}")
        if self.score_rows < 1:
            raise UserError(f"score_rows must be positive, got {self.score_rows}")

    def to_dict(self) -> dict:
        return asdict(self)


def tokenize(tokenizer, docs: Sequence[Document]) -> list[list[int]]:
    if not docs:
        return []
    enc = tokenizer([d.text for d in docs], add_special_tokens=False)
    return [list(ids) for ids in enc["input_ids"]]


def first_token_bytes(tokenizer, docs: Sequence[Document], tokens: Sequence[list[int]]) -> list[int]:
    """UTF-8 bytes of the text of each document's first token: the token a model without a BOS or EOS prefix
    cannot predict, whose bytes therefore leave the bits-per-byte denominator.

    Read from the tokenizer's character offsets (a token that ends inside a character counts up to the end
    of that character); tokenizers without offsets decode the first token alone."""
    out = []
    for d, ids in zip(docs, tokens):
        if not ids:
            out.append(0)
            continue
        end = None
        try:
            enc = tokenizer(d.text, add_special_tokens=False, return_offsets_mapping=True)
            offsets = enc["offset_mapping"]
            if offsets and list(enc["input_ids"][:1]) == list(ids[:1]):
                end = offsets[0][1]
        except (NotImplementedError, TypeError, ValueError, KeyError):
            end = None
        if end is not None:
            out.append(len(d.text[:end].encode("utf-8")))
        else:
            out.append(min(d.n_bytes, len(tokenizer.decode(ids[:1]).encode("utf-8"))))
    return out


@dataclass
class Prepared:
    docs: list[Document]
    n_tokens: list[int]
    n_pred: list[int]
    batches: list[list[Window]]
    groups: list[list[int]]  # consecutive batch indices scored together (the unit of work and of commits)
    #: UTF-8 bytes of the text the predicted tokens cover: the document's bytes, less its first token's when
    #: there is no prefix token (that token is never predicted). The bits-per-byte denominator.
    n_bytes: list[int] = field(default_factory=list)

    @property
    def total_pred(self) -> int:
        return sum(self.n_pred)


def prepare(
    docs: Sequence[Document],
    tokens: Sequence[list[int]],
    prefix: int | None,
    settings: EvalSettings,
    max_length: int | None = None,
    *,
    tokenizer=None,
) -> Prepared:
    """Windows, batches and scoring groups of ``docs``. Without a ``prefix`` token the first token of each
    document is not predicted, and ``tokenizer`` is needed to take its bytes out of the denominator."""
    if prefix is None:
        if tokenizer is None:
            raise ValueError(
                "prepare() needs the tokenizer when there is no prefix token (to count the bytes "
                "of the unpredicted first tokens)"
            )
        unscored = first_token_bytes(tokenizer, docs, tokens)
    else:
        unscored = [0] * len(docs)
    window = settings.window if max_length is None else min(settings.window, max_length)
    context = min(settings.context, window - 2)
    windows: list[Window] = []
    for i, toks in enumerate(tokens):
        windows.extend(make_windows(i, toks, prefix, window, context))
    batches = batch_windows(windows, settings.batch_tokens, settings.bucket)
    return Prepared(
        docs=list(docs),
        n_tokens=[len(t) for t in tokens],
        n_pred=[n_predicted(len(t), prefix is not None) for t in tokens],
        batches=batches,
        groups=score_groups(batches, settings.score_rows),
        n_bytes=[d.n_bytes - u for d, u in zip(docs, unscored)],
    )


def score_groups(batches: list[list[Window]], score_rows: int) -> list[list[int]]:
    """Consecutive batches gathered until they hold ``score_rows`` scored tokens.

    The output layer is a matrix product per vocabulary slice; with few rows it runs far below the CPU's peak
    (90 vs 130 GFLOP/s for 200 vs 2000 rows here), so small batches are scored together. The grouping depends
    only on the batches, never on what else is being computed, so results do not either.
    """
    groups: list[list[int]] = []
    rows = 0
    for i, batch in enumerate(batches):
        if not groups or rows >= score_rows:
            groups.append([])
            rows = 0
        groups[-1].append(i)
        rows += sum(w.n_scored for w in batch)
    return groups
