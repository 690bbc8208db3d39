"""Dictionary transforms the BraTS pipeline needs beyond MONAI's own."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Spacingd

from bundle.layouts import DEFAULT_LAYOUT, LAYOUTS, MODALITIES, SUB_REGIONS

logger = logging.getLogger(__name__)

REGIONS: dict[str, tuple[str, ...]] = {
    "wt": ("necrosis", "edema", "enhancing"),
    "tc": ("necrosis", "enhancing"),
    "et": ("enhancing",),
}
"""BraTS evaluation regions as unions of named sub-regions (whole tumour, core, enhancing)."""

REGION_SETS: dict[str, tuple[str, ...]] = {"wt": ("wt",), "wt_tc_et": ("wt", "tc", "et")}
"""What the ``regions`` config switch may name: the mask channels the model generates, in order."""


def region_names(regions: str | Sequence[str]) -> tuple[str, ...]:
    """The mask channels of a ``regions`` setting: a name of :data:`REGION_SETS` or a list."""
    if isinstance(regions, str):
        if regions not in REGION_SETS:
            raise ValueError(f"unknown regions {regions!r}; expected one of {sorted(REGION_SETS)}")
        return REGION_SETS[regions]
    names = tuple(regions)
    for name in names:
        if name not in REGIONS:
            raise ValueError(f"unknown region {name!r}; expected one of {sorted(REGIONS)}")
    return names


def region_values(layout: str, region: str) -> list[int]:
    """Label values of one region under one layout's numbering."""
    (region,) = region_names([region])
    return [LAYOUTS[layout].label(name) for name in REGIONS[region]]


WHOLE_TUMOUR = "whole tumour"
"""The one class of a whole-tumour-only model's labelmap."""


def labelmap_classes(regions: str | Sequence[str], layout: str = DEFAULT_LAYOUT) -> dict[str, int]:
    """The classes of the segmentation labelmap and their values, which MONAI Label's labels,
    the metadata's ``channel_def`` and Slicer's segments must all agree on: whole tumour = 1 for
    a ``wt`` model; the three BraTS sub-regions in the layout's numbering for ``wt_tc_et``."""
    regions = region_names(regions)
    if regions == ("wt",):
        return {WHOLE_TUMOUR: 1}
    if set(regions) != set(REGIONS):
        raise ValueError(f"a labelmap needs the regions {sorted(REGIONS)}, got {list(regions)}")
    return {name: LAYOUTS[layout].label(name) for name in SUB_REGIONS}


def regions_to_labelmap(masks: torch.Tensor, regions: Sequence[str], layout: str) -> torch.Tensor:
    """One labelmap in a layout's numbering from binary region channels (C, ...) -> (1, ...).

    Each voxel gets the sub-region that its regions single out, with the nesting of BraTS
    enforced (enhancing lies in the core, the core in the whole tumour): a voxel is enhancing
    only if all three say so, necrosis if it is core but not enhancing, and edema if it is whole
    tumour only. A whole-tumour-only model gives a binary 0/1 map.
    """
    regions = region_names(regions)
    classes = labelmap_classes(regions, layout)
    inside = {name: masks[i] > 0 for i, name in enumerate(regions)}
    if regions == ("wt",):
        return (inside["wt"][None] * classes[WHOLE_TUMOUR]).to(torch.uint8)
    wt = inside["wt"]
    tc = inside["tc"] & wt
    et = inside["et"] & tc
    labelmap = torch.zeros_like(wt, dtype=torch.uint8)
    labelmap[wt] = classes["edema"]
    labelmap[tc] = classes["necrosis"]
    labelmap[et] = classes["enhancing"]
    return labelmap[None]


class ReorderChannelsd(MapTransform):
    """Put the image channels in the bundle's t1, t1ce, t2, flair order.

    The order comes with each case (``channel_order`` in its datalist entry), since a 4-D MSD
    file stores FLAIR first while separate BraTS files are loaded in the right order already.
    An entry without one (MONAI Label gives each case as one 4-D image and nothing else) is
    taken to be in the bundle's order, the metadata's ``channel_def``.
    """

    def __init__(self, keys: KeysCollection, order_key: str = "channel_order") -> None:
        super().__init__(keys)
        self.order_key = order_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        order = [int(i) for i in d.get(self.order_key, range(len(MODALITIES)))]
        for key in self.key_iterator(d):
            if d[key].shape[0] != len(MODALITIES):
                raise ValueError(
                    f"{_source(d[key])}: image has {d[key].shape[0]} channels, expected "
                    f"{len(MODALITIES)} ({', '.join(MODALITIES)})"
                )
            if order != list(range(len(MODALITIES))):
                d[key] = d[key][order]
        return d


class PathSafeSpacingd(Spacingd):
    """MONAI's ``Spacingd`` for data dicts that hold strings under names like ``image_path``.

    MONAI 1.6.1's ``Spacingd`` updates every entry named ``<key>_...`` as if it were a meta
    dict, which fails on MONAI Label's ``image_path`` (the request's file name); such entries
    are set aside while it runs.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict:
        d = dict(data)
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {
            k: d.pop(k)
            for k in list(d)
            if isinstance(k, str) and k.startswith(prefixes) and not isinstance(d[k], Mapping)
        }
        d = super().__call__(d, lazy=lazy)
        d.update(aside)
        return d


class LabelToRegionsd(MapTransform):
    """Turn a layout's integer labelmap into one binary channel per region (e.g. whole tumour).

    The layout (``layout`` in the datalist entry) says which numbers mean which sub-region, so
    BraTS 2020 (1, 2, 4), BraTS 2023 and MSD (1, 2, 3) give the same regions; an entry without
    one is read in :data:`bundle.layouts.DEFAULT_LAYOUT`'s numbering.
    """

    def __init__(
        self,
        keys: KeysCollection,
        regions: str | Sequence[str] = "wt",
        layout_key: str = "layout",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.regions = region_names(regions)  # fails at construction on an unknown region
        self.layout_key = layout_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        layout = d.get(self.layout_key, DEFAULT_LAYOUT)
        for key in self.key_iterator(d):
            label = d[key]
            channels = [
                torch.isin(label[0], torch.as_tensor(region_values(layout, r), device=label.device))
                for r in self.regions
            ]
            d[key] = _with_meta_of(torch.stack(channels).to(torch.float32), label)
        return d


class SelectSlicesd(MapTransform):
    """Pick a fixed, evenly spread set of axial slices of a volume, half with tumour.

    Validation needs the same slices every epoch (random crops would make its Dice noisy), and
    half of them with tumour so that the Dice says something. Returns one 2-D dict per slice.
    """

    def __init__(self, keys: KeysCollection, label_key: str = "label", num_slices: int = 8) -> None:
        super().__init__(keys)
        self.label_key = label_key
        self.num_slices = num_slices

    def _slice_indices(self, image: torch.Tensor, label: torch.Tensor) -> list[int]:
        tumour = label.reshape(-1, label.shape[-1]).any(0)
        brain = (image != 0).reshape(-1, image.shape[-1]).any(0)
        with_tumour = torch.nonzero(tumour).flatten().tolist()
        without = torch.nonzero(brain & ~tumour).flatten().tolist()
        n_tumour = min(len(with_tumour), (self.num_slices + 1) // 2)
        n_other = min(len(without), self.num_slices - n_tumour)
        return sorted(_evenly(with_tumour, n_tumour) + _evenly(without, n_other))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> list[dict]:
        d = dict(data)
        first = next(iter(self.key_iterator(d)))
        indices = self._slice_indices(d[first], d[self.label_key])
        out = []
        for z in indices:
            item = dict(d)
            for key in self.key_iterator(d):
                item[key] = d[key][..., z]
            item["slice_index"] = z
            out.append(item)
        return out


def _evenly(values: list[int], n: int) -> list[int]:
    if n <= 0:
        return []
    picks = np.linspace(0, len(values) - 1, n + 2)[1:-1] if n < len(values) else range(len(values))
    return [values[int(round(i))] for i in picks]


def _with_meta_of(data: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``data`` with the metadata and transform stack of ``like`` (when that is a MetaTensor)."""
    if isinstance(like, MetaTensor):
        return MetaTensor(data, meta=like.meta, applied_operations=like.applied_operations)
    return data


def _source(tensor: torch.Tensor) -> str:
    meta = getattr(tensor, "meta", {}) or {}
    return str(meta.get("filename_or_obj", "image"))


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


class RegionsToLabelmapd(MapTransform):
    """Binary region channels into one labelmap in the case's own label numbering (``layout``
    of its datalist entry), as BraTS distributes labels and Slicer shows them; see
    :func:`regions_to_labelmap`."""

    def __init__(
        self,
        keys: KeysCollection = "pred",
        regions: str | Sequence[str] = "wt",
        layout_key: str = "layout",
    ) -> None:
        super().__init__(keys)
        self.regions = region_names(regions)
        self.layout_key = layout_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        layout = d.get(self.layout_key, DEFAULT_LAYOUT)
        for key in self.key_iterator(d):
            masks = d[key]
            plain = masks.as_tensor() if isinstance(masks, MetaTensor) else masks
            d[key] = _with_meta_of(regions_to_labelmap(plain, self.regions, layout), masks)
        return d


def _border_voxels(volume: np.ndarray) -> np.ndarray:
    """The voxels of a 3-D volume's six outer faces (air, in any brain MR acquisition)."""
    faces = [volume[0], volume[-1], volume[:, 0], volume[:, -1], volume[:, :, 0], volume[:, :, -1]]
    return np.concatenate([face.ravel() for face in faces])


def brain_mask(image: np.ndarray, level: float = 0.02) -> np.ndarray:
    """Voxels of a (C, H, W, D) image that hold brain, without assuming the background is 0.

    Per channel, the background is the median of the volume's outer faces and its noise the
    99th percentile of their distance from it; a voxel is brain in that channel if it differs
    from the background by more than the noise and more than ``level`` times the channel's
    99.9th percentile distance (a few hot voxels do not move it). The mask is the union of the
    channels: a tissue dark in one sequence is bright in another. On the real BraTS 2018 cases
    ``level=0.02`` keeps 98.5-100 % of their non-zero voxels and adds none.
    """
    mask = np.zeros(image.shape[1:], dtype=bool)
    for channel in image:
        border = _border_voxels(channel)
        background = float(np.median(border))
        noise = float(np.percentile(np.abs(border - background), 99))
        distance = np.abs(channel - background)
        scale = float(np.percentile(distance[::2, ::2, ::2], 99.9))
        mask |= distance > max(noise, level * scale)
    return mask


class BrainNormalized(MapTransform):
    """Z-score each channel over the brain after clipping it to its brain percentiles; 0 outside.

    Replaces ``NormalizeIntensityd(nonzero=True)``, whose "brain" is every non-zero voxel and
    whose statistics a single hot spot can move: with :func:`brain_mask` and the clipping,
    images that were z-scored already (negative background), have a noise floor instead of
    exact zeros, or hold a patch of extreme values give the network the input it was trained
    on. Inputs outside that range are named in a warning (the case's file): a background that
    is not 0, or values far beyond the brain's 99.5th percentile. Must run on the whole volume
    (before any crop or pad adds a border of zeros). The brain is exactly 0 afterwards outside
    the mask, as the inferers' brain test expects.

    Args:
        keys: the image key(s), channel first (C, H, W, D).
        lower: percentile of the brain's values clipped to from below.
        upper: percentile of the brain's values clipped to from above.
        level: see :func:`brain_mask`.
    """

    def __init__(
        self, keys: KeysCollection, lower: float = 0.5, upper: float = 99.5, level: float = 0.02
    ) -> None:
        super().__init__(keys)
        self.lower, self.upper, self.level = lower, upper, level

    @property
    def settings(self) -> dict[str, object]:
        """What the weights trained on its output depend on (stored with them)."""
        return {
            "method": type(self).__name__,
            "lower": self.lower,
            "upper": self.upper,
            "level": self.level,
        }

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalise(d[key])
        return d

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """One (C, H, W, D) image, normalised; a MetaTensor keeps its meta data."""
        plain = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
        array = plain.detach().cpu().numpy().astype(np.float32)
        mask = brain_mask(array, self.level)
        out = np.zeros_like(array)
        notes = []
        if mask.any():
            for c, channel in enumerate(array):
                values = channel[mask]
                low, high = np.percentile(values, (self.lower, self.upper))
                background = float(np.median(_border_voxels(channel)))
                if background != 0:
                    notes.append(f"channel {c} has background {background:.3g}, not 0")
                if values.max() > high + 10 * (high - low):
                    notes.append(
                        f"channel {c} has values up to {values.max():.3g}, clipped at "
                        f"its 99.5th percentile {high:.3g}"
                    )
                clipped = np.clip(values, low, high)
                std = float(clipped.std())
                out[c][mask] = (clipped - clipped.mean()) / (std if std > 0 else 1.0)
        else:
            notes.append("no brain found (every channel is constant)")
        if notes:
            logger.warning(
                f"{_source(image)}: outside the training data's range: "
                + "; ".join(notes)
                + " (normalised over the brain found)"
            )
        result = torch.as_tensor(out, device=plain.device)
        return _with_meta_of(result, image) if isinstance(image, MetaTensor) else result
