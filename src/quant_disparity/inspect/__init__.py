"""Inside the layers: super weights (:mod:`.superweights`) and the outlier structure of every weight tensor
(:mod:`.outliers`); :mod:`.command` loads a model and runs them for ``quant-disparity inspect``."""

from .outliers import GAUSSIAN, TensorOutliers, outlier_stats, outliers_summary, tensor_outliers
from .superweights import (
    DEFAULT_PROMPT,
    LayerProfile,
    SuperWeight,
    SuperWeightResult,
    Thresholds,
    detect_super_weights,
    down_projections,
)

__all__ = [
    "DEFAULT_PROMPT",
    "GAUSSIAN",
    "LayerProfile",
    "SuperWeight",
    "SuperWeightResult",
    "TensorOutliers",
    "Thresholds",
    "detect_super_weights",
    "down_projections",
    "outlier_stats",
    "outliers_summary",
    "tensor_outliers",
]
