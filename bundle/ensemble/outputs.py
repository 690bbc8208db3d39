"""The ensemble inferers' output split into what a user reads: segmentation, mean, variance."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform


class SplitEnsembled(MapTransform):
    """Split the ensemble inferer's output into the segmentation, the mean and the variance.

    The inferer returns C mean channels (one per region), C variance channels, then any
    samples; the segmentation is the mean thresholded at 0.5, as in the paper, one binary
    channel per region.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        num_channels: int = 1,
        threshold: float = 0.5,
        mean_key: str = "mean",
        variance_key: str = "variance",
        samples_key: str = "samples",
    ) -> None:
        super().__init__(keys)
        self.num_channels = num_channels
        self.threshold = threshold
        self.mean_key, self.variance_key, self.samples_key = mean_key, variance_key, samples_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        c = self.num_channels
        for key in self.key_iterator(d):
            out = d[key]
            d[self.mean_key] = out[:c]
            d[self.variance_key] = out[c : 2 * c]
            if out.shape[0] > 2 * c:
                d[self.samples_key] = out[2 * c :]
            d[key] = (out[:c] > self.threshold).to(torch.uint8)
        return d
