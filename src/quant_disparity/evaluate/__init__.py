"""Per-document scoring: windows, batched forward, fused exact head statistics."""

from .runner import DocScores, EvalSettings, Forward, Prepared, evaluate, prepare, tokenize
from .scoring import LMHead, TokenScores, head_of, score_tokens
from .windows import Window, batch_windows, make_windows, n_predicted

__all__ = [
    "DocScores", "EvalSettings", "Forward", "LMHead", "Prepared", "TokenScores", "Window", "batch_windows",
    "evaluate", "head_of", "make_windows", "n_predicted", "prepare", "score_tokens", "tokenize",
]
