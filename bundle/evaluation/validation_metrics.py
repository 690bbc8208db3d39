"""Uncertainty quality: does the ensemble's variance mark the voxels it gets wrong?"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import ignite.distributed as idist
import torch
from ignite.metrics import Metric

from bundle.evaluation.metrics import variance_on_errors


class VarianceErrorRatio(Metric):
    """Mean variance on wrong voxels over mean variance on right voxels, pooled over images.

    Above 1 the variance map points at the segmentation's errors; 1 means it says nothing. A
    sampler that makes all samples agree drives both means to 0 and the ratio to nan.
    """

    def __init__(
        self, output_transform: Callable = lambda output: output, device: str = "cpu"
    ) -> None:
        # the output is three lists (variance, segmentation, label): not ignite's (y_pred, y) pair
        super().__init__(output_transform=output_transform, device=device, skip_unrolling=True)

    def reset(self) -> None:
        self._sums = [0.0, 0, 0.0, 0]

    def update(self, output: Sequence[Sequence[torch.Tensor]]) -> None:
        for variance, seg, label in zip(*output, strict=True):
            for i, value in enumerate(variance_on_errors(variance, seg, label)):
                self._sums[i] += value

    def compute(self) -> float:
        # pooled over the ranks too when validation data are split by a DistributedSampler
        sums = idist.all_reduce(torch.tensor(self._sums, dtype=torch.float64))
        wrong_sum, n_wrong, right_sum, n_right = sums.tolist()
        if n_wrong == 0 or n_right == 0 or right_sum == 0:
            return float("nan")
        return (wrong_sum / n_wrong) / (right_sum / n_right)
