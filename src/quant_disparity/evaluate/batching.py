"""Score documents: tokenize, window, batch, forward, and accumulate per-document statistics.

The forward pass stops at the decoder's final hidden states; :mod:`.scoring` applies the LM head slice by
slice. Whether that split reproduces the model's own logits is checked once per model on a probe batch; a
model where it does not (an unusual head) falls back to the full forward pass, with the same statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..corpus.documents import Document
from ..errors import UserError
from .scoring import LMHead, head_of, score_tokens
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


def prepare(docs: Sequence[Document], tokens: Sequence[list[int]], prefix: int | None, settings: EvalSettings,
            max_length: int | None = None, *, tokenizer=None) -> Prepared:
    """Windows, batches and scoring groups of ``docs``. Without a ``prefix`` token the first token of each
    document is not predicted, and ``tokenizer`` is needed to take its bytes out of the denominator."""
    if prefix is None:
        if tokenizer is None:
            raise ValueError("prepare() needs the tokenizer when there is no prefix token (to count the bytes "
                             "of the unpredicted first tokens)")
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


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    prefix = getattr(model, "base_model_prefix", None)
    base = getattr(model, prefix, None) if prefix else None
    return base if isinstance(base, torch.nn.Module) and base is not model else None


def pack_batch(batch: list[Window], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask, plus flat indices of the predicting positions, their targets and docs."""
    L = max(len(w.input_ids) for w in batch)
    ids = torch.zeros(len(batch), L, dtype=torch.long)
    mask = torch.zeros(len(batch), L, dtype=torch.long)
    flat, targets, docs = [], [], []
    for b, w in enumerate(batch):
        n = len(w.input_ids)
        ids[b, :n] = torch.tensor(w.input_ids)
        mask[b, :n] = 1
        p0 = w.first_scored_position
        flat.extend(range(b * L + p0, b * L + n - 1))
        targets.extend(w.input_ids[p0 + 1 :])
        docs.extend([w.doc] * w.n_scored)
    to = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    return ids.to(device), mask.to(device), to(flat), to(targets), to(docs)


class Forward:
    """Runs a model on window batches and returns the rows the head needs."""

    def __init__(self, model: torch.nn.Module, *, check: bool = True):
        self.model = model
        self.base = _base_model(model)
        self.device = next(model.parameters()).device
        self.split = self.base is not None and model.get_output_embeddings() is not None
        if self.split and check:
            self.split = self._split_matches()

    def head(self) -> LMHead:
        """The head as it is now (call after switching weights: a quantized LM head is picked up)."""
        if self.split:
            return head_of(self.model)
        return LMHead(weight=None, vocab=self.model.get_output_embeddings().weight.shape[0])

    @torch.inference_mode()
    def rows(self, batch: list[Window]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, mask, flat, targets, docs = pack_batch(batch, self.device)
        if self.split:
            h = self.base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        else:
            h = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return h.reshape(-1, h.shape[-1])[flat], targets, docs

    def rows_of(self, batches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows, targets and documents of several batches, concatenated in order."""
        parts = [self.rows(b) for b in batches]
        if len(parts) == 1:
            return parts[0]
        return tuple(torch.cat(x) for x in zip(*parts))

    @torch.inference_mode()
    def _split_matches(self) -> bool:
        """Does base model + :func:`head_of` reproduce the model's own log-probabilities on a probe?"""
        gen = torch.Generator().manual_seed(0)
        vocab = self.model.get_output_embeddings().weight.shape[0]
        ids = torch.randint(0, vocab, (2, 12), generator=gen).to(self.device)
        mask = torch.ones_like(ids)
        ref = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), -1)
        h = self.base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        targets = ids[:, 1:].reshape(-1)
        mine = score_tokens(h[:, :-1].reshape(-1, h.shape[-1]), targets, head_of(self.model)).nll
        theirs = -ref[:, :-1].reshape(-1, vocab).gather(1, targets[:, None]).squeeze(1).double()
        tol = 1e-3 if ref.dtype == torch.float32 and h.dtype == torch.float32 else 5e-2
        return bool(torch.allclose(mine.cpu(), theirs.cpu(), atol=tol, rtol=tol))


@dataclass
class DocScores:
    """Per-document sums (numpy arrays aligned with the prepared documents)."""

    nll: np.ndarray  # nats, model
    n_pred: np.ndarray
    nll_ref: np.ndarray | None = None  # nats, reference
    kl: np.ndarray | None = None  # nats, KL(ref ‖ model) summed over tokens
    top1: np.ndarray | None = None  # tokens where model and reference agree on the arg-max


def evaluate(
    forward: Forward,
    prepared: Prepared,
    *,
    use_reference: Callable[[], None] | None = None,
    use_model: Callable[[], None] | None = None,
    vocab_chunk: int = 4096,
    progress: Callable[[int], None] | None = None,
) -> DocScores:
    """Score ``prepared`` documents.

    With ``use_reference`` and ``use_model`` (callables that switch the model's weights), every batch is run
    twice and compared token by token; otherwise the model is scored as it is.
    """
    n_docs = len(prepared.docs)
    nll = torch.zeros(n_docs, dtype=torch.float64)
    paired = use_reference is not None
    nll_ref = torch.zeros(n_docs, dtype=torch.float64) if paired else None
    kl = torch.zeros(n_docs, dtype=torch.float64) if paired else None
    top1 = torch.zeros(n_docs, dtype=torch.float64) if paired else None
    for group in prepared.groups:
        if paired:
            use_reference()
            h_ref, targets, docs = forward.rows_of(prepared.batches[i] for i in group)
            head_ref = forward.head()
            use_model()
        h, targets, docs = forward.rows_of(prepared.batches[i] for i in group)
        with torch.inference_mode():
            s = score_tokens(h, targets, forward.head(), h_ref if paired else None,
                             head_ref if paired else None, vocab_chunk=vocab_chunk)
        docs = docs.cpu()
        nll.index_add_(0, docs, s.nll.cpu())
        if paired:
            nll_ref.index_add_(0, docs, s.nll_ref.cpu())
            kl.index_add_(0, docs, s.kl.cpu())
            top1.index_add_(0, docs, s.top1_agree.cpu().double())
        if progress:
            progress(int(targets.numel()))
    n_pred = np.asarray(prepared.n_pred, dtype=np.int64)
    as_np = lambda t: None if t is None else t.numpy()  # noqa: E731
    return DocScores(nll=nll.numpy(), n_pred=n_pred, nll_ref=as_np(nll_ref), kl=as_np(kl), top1=as_np(top1))
