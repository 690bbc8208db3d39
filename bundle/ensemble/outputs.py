"""The ensemble inferers' output split into what a user reads: segmentation, mean, variance,
votes."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from bundle.ensemble.inferers import STATISTICS, THRESHOLD


class SplitEnsembled(MapTransform):
    """Split the ensemble inferer's output into the maps of
    :data:`bundle.ensemble.inferers.STATISTICS` (mean, variance, votes), each under its own key.

    The inferer returns C channels (one per region) of each map, then any samples (under
    ``samples_key``). Splitting before ``Invertd`` lets each map be brought back to the input's
    grid with its own interpolation (the votes by nearest neighbour, so that they stay fractions
    of the N samples); :class:`Segmentd` then thresholds the mean.

    Args:
        keys: the inferer's output; removed.
        num_channels: C, the regions.
        samples_key: where the samples go, when the inferer returned them.
    """

    def __init__(
        self, keys: KeysCollection = "pred", num_channels: int = 1, samples_key: str = "samples"
    ) -> None:
        super().__init__(keys)
        self.num_channels = num_channels
        self.samples_key = samples_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        c = self.num_channels
        for key in self.key_iterator(d):
            out = d.pop(key)
            for i, name in enumerate(STATISTICS):
                d[name] = out[i * c : (i + 1) * c]
            if out.shape[0] > len(STATISTICS) * c:
                d[self.samples_key] = out[len(STATISTICS) * c :]
        return d


class Segmentd(MapTransform):
    """The segmentation, as in the paper: the ensemble mean thresholded, one binary channel per
    region.

    Args:
        keys: the mean.
        output_key: where the segmentation goes.
        threshold: of the mean.
    """

    def __init__(
        self, keys: KeysCollection = "mean", output_key: str = "pred", threshold: float = THRESHOLD
    ) -> None:
        super().__init__(keys)
        self.output_key = output_key
        self.threshold = threshold

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key] = (d[key] > self.threshold).to(torch.uint8)
        return d
