"""Score one model on prepared documents, against the reference model when asked (a paired comparison)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .batching import Prepared
from .forward import Forward
from .scoring import score_tokens
from .totals import DocTotals


@dataclass
class DocScores:
    """Per-document sums (numpy arrays aligned with the prepared documents)."""

    nll: np.ndarray  # nats, model
    n_pred: np.ndarray
    nll_ref: np.ndarray | None = None  # nats, reference
    kl: np.ndarray | None = None  # nats, KL(ref ‖ model) summed over tokens
    top1: np.ndarray | None = None  # tokens where model and reference agree on the arg-max


def score_documents(
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
    paired = use_reference is not None
    model = DocTotals(n_docs, compared=paired)
    reference = DocTotals(n_docs, compared=False)
    for group in prepared.groups:
        if paired:
            assert use_reference is not None and use_model is not None, "use_reference and use_model go together"
            use_reference()
            h_ref, targets, docs = forward.rows_of(prepared.batches[i] for i in group)
            head_ref = forward.head()
            use_model()
        h, targets, docs = forward.rows_of(prepared.batches[i] for i in group)
        with torch.inference_mode():
            s = score_tokens(
                h,
                targets,
                forward.head(),
                h_ref if paired else None,
                head_ref if paired else None,
                vocab_chunk=vocab_chunk,
            )
        docs = docs.cpu()
        model.add(docs, s)
        if paired:
            assert s.nll_ref is not None  # scored against h_ref
            reference.add_nll(docs, s.nll_ref)
        if progress:
            progress(int(targets.numel()))
    n_pred = np.asarray(prepared.n_pred, dtype=np.int64)
    as_np = lambda t: None if t is None else t.numpy()
    return DocScores(
        nll=model.nll.numpy(),
        n_pred=n_pred,
        nll_ref=reference.nll.numpy() if paired else None,
        kl=as_np(model.kl),
        top1=as_np(model.top1),
    )


def concat_scores(parts: list[DocScores]) -> DocScores:
    """Scores of consecutive document lists, as one (documents in the order of ``parts``)."""
    if len(parts) == 1:
        return parts[0]

    def cat(name: str) -> np.ndarray | None:
        arrays = [getattr(p, name) for p in parts]
        return None if any(a is None for a in arrays) else np.concatenate(arrays)

    nll, n_pred = cat("nll"), cat("n_pred")
    assert nll is not None and n_pred is not None
    return DocScores(nll=nll, n_pred=n_pred, nll_ref=cat("nll_ref"), kl=cat("kl"), top1=cat("top1"))
