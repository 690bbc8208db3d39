"""Tumour regions: the masks a model generates (whole tumour, core, enhancing) and the labelmaps
they come from and go back to, in each layout's own numbering."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from bundle.data.layouts import DEFAULT_LAYOUT, LAYOUTS, SUB_REGIONS
from bundle.data.transforms import with_meta_of

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


def region_channel(regions: str | Sequence[str], region: str = "wt") -> int:
    """The mask channel that holds ``region`` (the whole tumour by default) under a ``regions``
    setting, so that no code takes a channel's meaning from its position."""
    names = region_names(regions)
    if region not in names:
        raise ValueError(f"regions {list(names)} have no {region!r} channel")
    return names.index(region)


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


class LabelToRegionsd(MapTransform):
    """Turn a layout's integer labelmap into one binary channel per region (e.g. whole tumour).

    The layout (``layout`` in the datalist entry) says which numbers mean which sub-region, so
    BraTS 2020 (1, 2, 4), BraTS 2023 and MSD (1, 2, 3) give the same regions; an entry without
    one is read in :data:`bundle.data.layouts.DEFAULT_LAYOUT`'s numbering.
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
            d[key] = with_meta_of(torch.stack(channels).to(torch.float32), label)
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
            d[key] = with_meta_of(regions_to_labelmap(plain, self.regions, layout), masks)
        return d
