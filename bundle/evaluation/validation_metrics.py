"""What training's validation measures besides the ensemble's Dice: does its variance mark the
voxels it gets wrong, and how much better is it than one sample?"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import ignite.distributed as idist
import torch
from ignite.metrics import Metric

from bundle.ensemble.inferers import THRESHOLD
from bundle.evaluation.metrics import variance_on_errors


def each_sample(num_channels: int) -> Callable[[Sequence[dict]], tuple[list, list]]:
    """An ``output_transform`` for MONAI's ``MeanDice``: every sample's segmentation (the
    ``samples`` the ensemble inferer returns with ``return_samples``, C channels each) paired
    with its image's label, so that the metric is the Dice of one sample alone. The ensemble's
    gain over one sample is ``val_mean_dice`` minus it; it shrinks as training goes on
    (docs/uncertainty.md), which the ensemble's Dice alone does not show."""

    def transform(output: Sequence[dict]) -> tuple[list, list]:
        masks, labels = [], []
        for item in output:
            samples, label = item["samples"], item["label"]
            for sample in samples.reshape(-1, num_channels, *samples.shape[1:]):
                masks.append((sample > THRESHOLD).to(label.dtype))
                labels.append(label)
        return masks, labels

    return transform


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
