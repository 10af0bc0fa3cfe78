"""Per-document sums of per-token scores: the one place token scores become document totals.

Sums are float64 ``index_add_`` over the tokens in the order they were scored, so the same tokens give the
same totals bit for bit, whether they are summed over a whole run (:func:`.paired.score_documents`,
:func:`.sweep.sweep`) or per batch group (the experiment runner commits each group on its own).
"""

from __future__ import annotations

import torch

from .scoring import TokenScores


class DocTotals:
    """NLL (nats), and when compared with a reference KL (nats) and top-1 agreements, summed per document."""

    def __init__(self, n_docs: int, compared: bool = True):
        zeros = lambda: torch.zeros(n_docs, dtype=torch.float64)
        self.nll = zeros()
        self.kl = zeros() if compared else None
        self.top1 = zeros() if compared else None

    def add(self, docs: torch.Tensor, scores: TokenScores) -> None:
        """Add per-token ``scores`` of the documents ``docs`` (a CPU index per token)."""
        self.add_nll(docs, scores.nll)
        if self.kl is not None:
            assert self.top1 is not None  # set together with kl
            assert scores.kl is not None and scores.top1_agree is not None, "compared totals need compared scores"
            self.kl.index_add_(0, docs, scores.kl.cpu())
            self.top1.index_add_(0, docs, scores.top1_agree.cpu().double())

    def add_nll(self, docs: torch.Tensor, nll: torch.Tensor) -> None:
        self.nll.index_add_(0, docs, nll.cpu().double())
