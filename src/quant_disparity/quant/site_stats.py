"""What calibration hands a scheme for one tensor: the statistics of its linear layer's input.

Its own module (torch and dataclasses only) so that the scheme base class can name it without importing
:mod:`.calibration`, which imports the schemes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only annotations: the module imports no torch
    import torch


@dataclass
class SiteStats:
    """Statistics of the input ``x`` of one linear layer (shared by the tensors that read the same input)."""

    xtx: torch.Tensor  # float64 [in, in]: Σ x xᵀ over calibration rows
    abs_sum: torch.Tensor  # float64 [in]: Σ |x|
    rows: torch.Tensor  # float32 [r, in]: a seeded subsample of input rows
    n: int  # rows seen

    @property
    def hessian(self) -> torch.Tensor:
        """GPTQ's ``H = 2/n Σ x xᵀ`` (float64; the scale does not change GPTQ's result, damping is relative)."""
        return self.xtx * (2.0 / max(self.n, 1))

    @property
    def mean_abs(self) -> torch.Tensor:
        return self.abs_sum / max(self.n, 1)

    def columns(self, idx: torch.Tensor) -> SiteStats:
        """The statistics of the input channels ``idx`` alone (for a tensor whose other columns are kept)."""
        return SiteStats(
            xtx=self.xtx.index_select(0, idx).index_select(1, idx),
            abs_sum=self.abs_sum.index_select(0, idx),
            rows=self.rows.index_select(1, idx),
            n=self.n,
        )
