"""Sensitivity scores per unit (tensor, component or layer) for choosing what to protect from quantization.

Each score is a :class:`ScoreKind` in :data:`SCORES` (entry-point group ``quant_disparity.scores``). The
weight-only scores (:mod:`.weights`) are the same for every language: weight statistics (``variance``,
``kurtosis``, ``max_over_mean``, ``outlier_share``), quantization error under the scheme (``rel_frobenius``,
``sqnr_db``) and the baselines ``magnitude`` and ``random``; a unit's score is computed over all its tensors'
elements together, in float64. The per-language scores (:mod:`.data`: ``act_error``, ``hessian_diag``,
``fisher``, ``grad_sq``) read a language's documents; ``measured`` and ``measured_kl`` read a locate output.
:mod:`.predict` correlates scores with the measured effect.
"""

from __future__ import annotations

from . import data as data
from .weights import SCORES, ScoreKind, UnitScores, compute_scores

__all__ = ["SCORES", "ScoreKind", "UnitScores", "compute_scores"]
