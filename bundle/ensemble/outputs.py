"""The ensemble inferers' output split into what a user reads: segmentation, mean, variance,
votes."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from bundle.ensemble.inferers import STATISTICS, THRESHOLD


class SplitEnsembled(MapTransform):
    """Split the ensemble inferer's output into the segmentation and the maps of
    :data:`bundle.ensemble.inferers.STATISTICS` (mean, variance, votes), each under its own key.

    The inferer returns C channels (one per region) of each map, then any samples (under
    ``samples_key``); the segmentation is the mean thresholded at 0.5, as in the paper, one
    binary channel per region.

    Args:
        keys: the inferer's output; replaced by the segmentation.
        num_channels: C, the regions.
        threshold: of the mean, for the segmentation.
        samples_key: where the samples go, when the inferer returned them.
        votes_from: a copy of the inferer's output, brought back to the input's grid by
            nearest-neighbour interpolation (``Invertd``), to read the votes from, so that they
            stay fractions of the N samples; removed. None: the votes of ``keys``.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        num_channels: int = 1,
        threshold: float = THRESHOLD,
        samples_key: str = "samples",
        votes_from: str | None = None,
    ) -> None:
        super().__init__(keys)
        self.num_channels = num_channels
        self.threshold = threshold
        self.samples_key = samples_key
        self.votes_from = votes_from

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        c = self.num_channels
        for key in self.key_iterator(d):
            out = d[key]
            for i, name in enumerate(STATISTICS):
                d[name] = out[i * c : (i + 1) * c]
            if out.shape[0] > len(STATISTICS) * c:
                d[self.samples_key] = out[len(STATISTICS) * c :]
            if self.votes_from is not None:
                votes = STATISTICS.index("votes") * c
                d["votes"] = d.pop(self.votes_from)[votes : votes + c]
            d[key] = (out[:c] > self.threshold).to(torch.uint8)
        return d
