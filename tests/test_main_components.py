"""The segmentation's clean-up (bundle.ensemble.outputs.Segmentd with min_component_fraction):
known answers on hand-made ensemble means."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser

from bundle.ensemble.inferers import THRESHOLD
from bundle.ensemble.outputs import SEGMENTATION_THRESHOLD, Segmentd
from tests.conftest import REPO


def _mean(*boxes: tuple[slice, ...], channels: int = 1) -> torch.Tensor:
    """A (C, 20, 20, 20) ensemble mean of 0.9 inside the boxes, 0.1 elsewhere."""
    mean = torch.full((channels, 20, 20, 20), 0.1)
    for box in boxes:
        mean[(slice(None), *box)] = 0.9
    return mean


BIG = (slice(2, 7), slice(2, 7), slice(2, 6))  # 100 voxels
SMALL = (slice(15, 17), slice(15, 17), slice(15, 17))  # 8 voxels, far from BIG
LARGE = (slice(12, 17), slice(12, 17), slice(12, 16))  # 100 voxels, far from BIG


def _segment(mean: torch.Tensor, fraction: float) -> torch.Tensor:
    return Segmentd(min_component_fraction=fraction)({"mean": mean})["pred"]


@pytest.mark.parametrize(("fraction", "kept"), [(0.0, 108), (0.05, 108), (0.2, 100)])
def test_parts_below_the_fraction_of_the_largest_are_removed(fraction, kept):
    pred = _segment(_mean(BIG, SMALL), fraction)
    assert pred.dtype == torch.uint8 and int(pred.sum()) == kept
    assert pred[(0, *BIG)].all()


def test_parts_of_similar_size_are_all_kept():
    pred = _segment(_mean(BIG, LARGE), 0.2)  # a tumour in two large parts
    assert int(pred.sum()) == 200


def test_parts_touching_at_a_corner_are_one_part():
    mean = _mean(BIG)
    mean[0, 7, 7, 6] = 0.9  # touches BIG's corner voxel (6, 6, 5) only diagonally
    assert int(_segment(mean, 0.2).sum()) == 101


def test_an_empty_segmentation_stays_empty():
    assert int(_segment(_mean(), 0.2).sum()) == 0


def test_regions_lose_the_same_parts_and_stay_nested():
    mean = _mean(BIG, SMALL, channels=3)
    mean[2] = 0.1
    mean[(2, *SMALL)] = 0.9  # the innermost region only in the small part
    pred = _segment(mean, 0.2)
    assert [int(c.sum()) for c in pred] == [100, 100, 0]


@pytest.mark.parametrize(
    ("overlays", "threshold"),
    [
        ([], SEGMENTATION_THRESHOLD),  # the shipped diffusion weights': chosen on validation
        (["baseline_unet_inference.yaml"], THRESHOLD),  # the U-Net's rule kept the paper's
        (["wt_tc_et.yaml"], THRESHOLD),  # not chosen for the three-region weights
    ],
)
def test_each_model_is_segmented_at_its_own_threshold(overlays, threshold):
    parser = ConfigParser()
    parser.read_config([str(REPO / "configs" / name) for name in ["inference.yaml", *overlays]])
    steps = parser.get_parsed_content("postprocessing").transforms
    (segmentd,) = [step for step in steps if isinstance(step, Segmentd)]
    assert segmentd.threshold == threshold and SEGMENTATION_THRESHOLD != THRESHOLD
