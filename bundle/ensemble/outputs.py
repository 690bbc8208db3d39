"""The ensemble inferers' output split into what a user reads: segmentation, mean, variance,
votes."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type
from scipy import ndimage

from bundle.ensemble.inferers import STATISTICS, THRESHOLD

MIN_COMPONENT_FRACTION = 0.2
"""Connected parts of a case's segmentation with fewer voxels than this fraction of its largest
part are removed: chosen on the validation cases by a rule written before the measurement
(docs/results.md, "Removing small parts"); 0 keeps every part, as the paper's plain threshold."""


SEGMENTATION_THRESHOLD = 0.4
"""The shipped diffusion model's segmentation is its ensemble mean above this, not the paper's
0.5 (:data:`~bundle.ensemble.inferers.THRESHOLD`): its soft samples put the mean of the tumour's
rim below 0.5. Chosen on the validation cases by a rule written before the measurement
(docs/results.md, "The threshold of the mean"); the U-Net baseline's rule kept 0.5 (its
overlay sets it)."""


VARIANCE_SLICE_SIGMA_MM = 2.0
"""The variance map is pooled over neighbouring slices by a Gaussian of this sigma (mm) along
the slice axis (:func:`smooth_across_slices`): the 2-D network samples each slice on its own.
Chosen on the validation cases by a rule written before the measurement (docs/uncertainty.md,
"Pooling the variance over neighbouring slices"); 0 keeps each slice's own variance, as the
paper."""


def slice_axis(affine: np.ndarray) -> int:
    """The voxel axis whose direction is closest to the world's inferior-superior axis."""
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return int(np.argmax(np.abs(directions[2])))


def smooth_across_slices(
    variance: np.ndarray, affine: np.ndarray, sigma_mm: float, first_spatial_axis: int = 0
) -> np.ndarray:
    """A ``variance`` whose X, Y, Z axes (in the grid of ``affine``) start at
    ``first_spatial_axis`` (1 for channels first) smoothed by a Gaussian of ``sigma_mm`` along
    its slice axis (:func:`slice_axis`), every other axis apart, zero beyond the volume; 0
    returns it as it is."""
    if sigma_mm == 0:
        return variance
    axis = slice_axis(affine)
    spacing = float(np.linalg.norm(affine[:3, axis]))
    return ndimage.gaussian_filter1d(
        variance, sigma_mm / spacing, axis=first_spatial_axis + axis, mode="constant"
    )


class SmoothAcrossSlicesd(MapTransform):
    """Variance maps (C, X, Y, Z) pooled over neighbouring slices, channel by channel
    (:func:`smooth_across_slices`), in the grid their MetaTensor affine gives (after
    ``Invertd``: the input's).

    Args:
        keys: the variance maps.
        sigma_mm: the Gaussian's sigma along the slice axis (:data:`VARIANCE_SLICE_SIGMA_MM` in
            inference); 0 leaves them as they are.
    """

    def __init__(self, keys: KeysCollection = "variance", sigma_mm: float = 0.0) -> None:
        super().__init__(keys)
        if sigma_mm < 0:
            raise ValueError(f"sigma_mm must be >= 0, got {sigma_mm}.")
        self.sigma_mm = sigma_mm

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            variance = d[key]
            affine = np.asarray(variance.affine, dtype=np.float64)
            maps = variance.detach().cpu().numpy()
            smoothed = smooth_across_slices(maps, affine, self.sigma_mm, first_spatial_axis=1)
            d[key] = convert_to_dst_type(smoothed, variance)[0]
        return d


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


def keep_main_components(masks: torch.Tensor, min_fraction: float) -> torch.Tensor:
    """(C, *spatial) binary masks cleared outside the connected parts (full connectivity) of
    their union that hold at least ``min_fraction`` of the largest part's voxels.

    Relative, not MONAI's ``KeepLargestConnectedComponent`` (the N largest) or
    ``RemoveSmallObjects`` (an absolute size): a segmentation may have several large parts (the
    U-Net's of one validation case has two of about 80 ml), and false positives such as a
    ventricle or a vessel are small beside the tumour whatever its size. One union for all
    regions keeps them nested.
    """
    if min_fraction <= 0:
        return masks
    parts, sizes = connected_parts(masks.detach().cpu().numpy().any(0))
    if len(sizes) < 3:  # background and at most one part
        return masks
    keep = sizes >= min_fraction * sizes.max()
    keep[0] = False
    return masks * torch.as_tensor(keep[parts], device=masks.device).to(masks.dtype)[None]


def connected_parts(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The parts of a binary mask (full connectivity) labelled 1..n, and each label's voxel
    count (label 0, the background, counted as 0)."""
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    parts, _ = ndimage.label(mask, structure=structure)
    sizes = np.bincount(parts.ravel())
    sizes[0] = 0
    return parts, sizes


def segment(
    mean: torch.Tensor, min_component_fraction: float = 0.0, threshold: float = THRESHOLD
) -> torch.Tensor:
    """The (C, *spatial) uint8 segmentation of a (C, *spatial) ensemble mean: thresholded, then
    only its main parts kept (:func:`keep_main_components`)."""
    return keep_main_components((mean > threshold).to(torch.uint8), min_component_fraction)


class Segmentd(MapTransform):
    """The segmentation: the ensemble mean thresholded, one binary channel per region, as in the
    paper; then, with ``min_component_fraction`` above 0, the small parts removed (inference on
    whole volumes; training's validation scores slices and keeps every part).

    Args:
        keys: the mean.
        output_key: where the segmentation goes.
        threshold: of the mean.
        min_component_fraction: parts with fewer voxels than this fraction of the largest are
            removed (:data:`MIN_COMPONENT_FRACTION` in inference); 0 keeps all.
    """

    def __init__(
        self,
        keys: KeysCollection = "mean",
        output_key: str = "pred",
        threshold: float = THRESHOLD,
        min_component_fraction: float = 0.0,
    ) -> None:
        super().__init__(keys)
        self.output_key = output_key
        self.threshold = threshold
        self.min_component_fraction = min_component_fraction

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key] = segment(d[key], self.min_component_fraction, self.threshold)
        return d
