"""The ``regions`` switch: BraTS labels -> nested region channels -> labelmap, in every layout."""

from __future__ import annotations

import pytest
import torch

from bundle.data.layouts import LAYOUTS
from bundle.data.regions import (
    LabelToRegionsd,
    RegionsToLabelmapd,
    region_names,
    regions_to_labelmap,
)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_labels_to_regions_to_labelmap_is_identity(layout):
    values = torch.tensor(LAYOUTS[layout].label_values)
    label = values[
        torch.randint(len(values), (1, 9, 8, 7), generator=torch.Generator().manual_seed(0))
    ]
    regions = LabelToRegionsd("label", regions="wt_tc_et")({"label": label, "layout": layout})
    assert regions["label"].shape == (3, 9, 8, 7)
    back = RegionsToLabelmapd("label", regions="wt_tc_et")(regions)
    assert back["label"].dtype == torch.uint8
    assert torch.equal(back["label"], label.to(torch.uint8))


def test_labelmap_enforces_nesting():
    # channels wt, tc, et; each voxel an inconsistent or consistent combination
    masks = torch.tensor(
        [[1, 0, 0, 1, 1, 0, 1], [0, 1, 0, 1, 0, 1, 1], [0, 0, 1, 0, 1, 1, 1]], dtype=torch.bool
    )
    labelmap = regions_to_labelmap(masks, "wt_tc_et", "brats2020")[0]
    # edema where only wt; core without wt is nothing; et needs tc and wt
    assert labelmap.tolist() == [2, 0, 0, 1, 2, 0, 4]
    regions = LabelToRegionsd("l", regions="wt_tc_et")({"l": labelmap[None]})["l"].bool()
    assert (regions[2] <= regions[1]).all() and (regions[1] <= regions[0]).all()


def test_whole_tumour_gives_a_binary_map():
    masks = torch.tensor([[0.0, 1.0, 1.0]])
    assert regions_to_labelmap(masks, "wt", "brats2023").tolist() == [[0, 1, 1]]


def test_region_switch_names_and_errors():
    assert region_names("wt") == ("wt",)
    assert region_names("wt_tc_et") == ("wt", "tc", "et")
    assert region_names(["tc"]) == ("tc",)
    with pytest.raises(ValueError, match="unknown regions 'wt_tc'"):
        region_names("wt_tc")
    with pytest.raises(ValueError, match="unknown region 'core'"):
        region_names(["core"])
    with pytest.raises(ValueError, match="needs the regions"):
        regions_to_labelmap(torch.ones(2, 3), ["wt", "tc"], "brats2020")
