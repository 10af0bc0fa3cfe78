"""Per-document scoring: windows, batched forward, fused exact head statistics."""

from .batching import EvalSettings, Prepared, prepare, tokenize
from .forward import Forward
from .paired import DocScores, concat_scores, score_documents
from .scoring import LMHead, TokenScores, head_of, score_tokens
from .totals import DocTotals
from .windows import Window, batch_windows, make_windows, n_predicted

__all__ = [
    "concat_scores",
    "DocScores",
    "DocTotals",
    "EvalSettings",
    "Forward",
    "LMHead",
    "Prepared",
    "TokenScores",
    "Window",
    "batch_windows",
    "head_of",
    "make_windows",
    "n_predicted",
    "prepare",
    "score_documents",
    "score_tokens",
    "tokenize",
]
