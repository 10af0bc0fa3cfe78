"""Sensitivity scores per unit (tensor, component or layer) for choosing what to protect from quantization.

Each score is a :class:`ScoreKind` in :data:`SCORES` (entry-point group ``quant_disparity.scores``). The
built-in scores read only the weights, so they are the same for every language: weight statistics
(``variance``, ``kurtosis``, ``max_over_mean``, ``outlier_share``), quantization error under the scheme
(``rel_frobenius``, ``sqnr_db``) and the baselines ``magnitude`` and ``random``. A unit's score is computed
over all its tensors' elements together, in float64.
"""

from __future__ import annotations

from .weights import SCORES, ScoreKind, UnitScores, compute_scores

__all__ = ["SCORES", "ScoreKind", "UnitScores", "compute_scores"]
