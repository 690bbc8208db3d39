"""The configs' preprocessing loads every layout into the same 4-channel, RAS, normalised tensor."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from bundle.data.datalist import build_datalist
from bundle.data.layouts import MODALITIES, find_cases
from tests.conftest import LAYOUT_NAMES, REPO, SMALL_SHAPE


def parser_for(dataset_dir: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "train.yaml"))
    settings = {
        "dataset_dir": str(dataset_dir),
        "image_size": SMALL_SHAPE[0],
        "in_plane_spacing": 1.0,
        "num_folds": 2,
        "test_fraction": 0.0,
        "bundle_root": str(REPO),
    }
    settings.update(overrides)
    for key, value in settings.items():
        parser[key] = value
    return parser


def load_case(dataset_dir: Path, case_index: int = 1) -> dict:
    parser = parser_for(dataset_dir)
    case = find_cases(dataset_dir)[case_index]
    return Compose(parser.get_parsed_content("load_transforms"))(case)


def canonical(path: str | Path) -> np.ndarray:
    return np.asanyarray(nib.as_closest_canonical(nib.load(str(path))).dataobj).astype(np.float32)


def normalised(volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Z-scored over the brain after clipping to its 0.5th and 99.5th percentiles, 0 outside."""
    values = np.clip(volume[brain], *np.percentile(volume[brain], (0.5, 99.5)))
    out = np.zeros_like(volume)
    out[brain] = (values - values.mean()) / values.std()
    return out


def test_brats2020_channels_geometry_and_labels(small_datasets):
    dataset = small_datasets["brats2020"]
    case = find_cases(dataset)[1]
    out = load_case(dataset)
    image, label = out["image"], out["label"]
    assert image.shape == (4, *SMALL_SHAPE) and label.shape == (1, *SMALL_SHAPE)
    assert image.dtype == torch.float32
    # each channel is its modality's file, in RAS order, normalised on the brain (the synthetic
    # cases' background is exactly 0)
    volumes = [canonical(path) for path in case["image"]]
    brain = np.any([volume != 0 for volume in volumes], axis=0)
    for channel, modality in enumerate(MODALITIES):
        expected = normalised(volumes[channel], brain)
        np.testing.assert_allclose(image[channel].numpy(), expected, atol=1e-4, err_msg=modality)
    seg = canonical(case["label"])
    np.testing.assert_array_equal(label[0].numpy(), (seg > 0).astype(np.float32))
    assert label.sum() > 0, "the fixture case must hold a tumour"


@pytest.mark.parametrize("layout", [n for n in LAYOUT_NAMES if n != "brats2020"])
def test_every_layout_gives_the_same_tensors(small_datasets, layout):
    reference = load_case(small_datasets["brats2020"])
    out = load_case(small_datasets[layout])
    assert find_cases(small_datasets[layout])[1]["layout"] == layout
    torch.testing.assert_close(out["image"], reference["image"])
    torch.testing.assert_close(out["label"], reference["label"])


def test_config_orientation_is_ras(small_datasets):
    parser = parser_for(small_datasets["brats2020"])
    transforms = parser.get_parsed_content("load_transforms")
    case = find_cases(small_datasets["brats2020"])[1]
    # keep the meta data to look at the affine the pipeline ends with
    out = Compose(transforms[:-1])(case)
    affine = out["image"].affine.numpy()
    assert (np.diag(affine)[:3] > 0).all(), affine
    assert nib.aff2axcodes(affine) == ("R", "A", "S")


def test_cases_without_labels_go_to_testing(tmp_path):
    from bundle.data.synthetic import make_demo_data

    make_demo_data(
        output_dir=str(tmp_path), num_cases=2, seed=1, shape=SMALL_SHAPE, with_labels=False
    )
    cases = find_cases(tmp_path)
    assert all("label" not in case for case in cases)
    datalist = build_datalist(tmp_path)
    assert len(datalist["testing"]) == 2 and not datalist["training"] and not datalist["validation"]


def test_training_dataset_draws_cached_axial_slices(small_datasets, tmp_path):
    dataset = tmp_path / "copy"
    shutil.copytree(small_datasets["brats2020"], dataset)
    parser = parser_for(dataset, slices_per_volume=4, batch_size=4)
    loader = parser.get_parsed_content("train#dataloader")
    first = [batch for batch in loader]
    batch = first[0]
    assert batch["image"].shape == (4, 4, *SMALL_SHAPE[:2])
    assert batch["label"].shape == (4, 1, *SMALL_SHAPE[:2])
    assert set(torch.unique(batch["label"]).tolist()) <= {0.0, 1.0}
    # every drawn slice holds brain: slices are drawn on tumour or on brain, never on air
    assert (batch["image"].abs().flatten(1).amax(1) > 0).all()
    # the volumes are cached: with the files gone, another epoch still runs
    shutil.rmtree(dataset)
    second = [batch for batch in loader]
    assert sum(len(b["image"]) for b in second) == sum(len(b["image"]) for b in first)


def test_neighbouring_slices_become_channels_after_the_slice_itself(small_datasets):
    """2.5-D input: the slice's own four modalities keep channels 0 to 3, then the slice
    ``step`` below and the slice ``step`` above, the end slices repeated past the volume."""
    dataset = small_datasets["brats2020"]
    case = find_cases(dataset)[1]
    flat = Compose(parser_for(dataset).get_parsed_content("load_transforms"))(case)
    parser = parser_for(dataset, context_slices=1, context_step=2)
    stacked = Compose(parser.get_parsed_content("load_transforms"))(case)
    image, depth = flat["image"], flat["image"].shape[-1]
    assert stacked["image"].shape == (12, *image.shape[1:])
    below = image[..., [max(z - 2, 0) for z in range(depth)]]
    above = image[..., [min(z + 2, depth - 1) for z in range(depth)]]
    assert torch.equal(stacked["image"], torch.cat([image, below, above]))
    # the label, and the brain slices training draws from, stay the slice's own
    assert torch.equal(stacked["label"], flat["label"])
    assert torch.equal(stacked["label_bg_indices"], flat["label_bg_indices"])
    assert parser.get_parsed_content("network_def").conv_in.conv.in_channels == 1 + 12
