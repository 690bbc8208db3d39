"""scripts/stack_modalities.py: MONAI Label's 4-D input, in the metadata's channel order, from
every layout; the geometry checked first. (MONAI Label's inference on its output equals the
bundle's on the separate files: tests/test_monailabel.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from bundle.data.layouts import LAYOUTS, MODALITIES, SUB_REGIONS, DatasetError
from scripts.stack_modalities import LABELS_FOLDER, stack_modalities
from tests.conftest import LAYOUT_NAMES, REPO


def test_metadata_channel_def_is_the_modality_order():
    image = json.loads((REPO / "configs" / "metadata.json").read_text())["network_data_format"]
    channels = image["inputs"]["image"]["channel_def"]
    masks = image["outputs"]["pred"]["num_channels"]  # the noisy mask channels come first
    assert [channels[str(masks + i)] for i in range(len(MODALITIES))] == list(MODALITIES)


def test_every_layout_gives_the_same_4d_file_in_the_metadata_order(small_datasets, tmp_path):
    """The three small datasets hold the same anatomy in three layouts (MSD in another channel
    order and label numbering): stacked, they are one and the same."""
    written = {}
    for layout in LAYOUT_NAMES:
        files = stack_modalities(str(small_datasets[layout]), str(tmp_path / layout))
        assert len(files) == 3
        written[layout] = files[0]
    reference = small_datasets["brats2020"] / written["brats2020"].name.removesuffix(".nii.gz")
    t1 = nib.load(str(reference / f"{reference.name}_t1.nii.gz"))
    seg = np.asanyarray(nib.load(str(reference / f"{reference.name}_seg.nii.gz")).dataobj)
    for layout, path in written.items():
        image = nib.load(str(path))
        assert image.shape == (*t1.shape, len(MODALITIES))
        np.testing.assert_array_equal(image.affine, t1.affine)
        assert int(image.header["sform_code"]) == int(t1.header["sform_code"])
        data = np.asanyarray(image.dataobj)
        for channel, modality in enumerate(MODALITIES):
            separate = nib.load(str(reference / f"{reference.name}_{modality}.nii.gz"))
            np.testing.assert_array_equal(data[..., channel], np.asanyarray(separate.dataobj))
        label = nib.load(str(path.parent / LABELS_FOLDER / path.name))
        assert label.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(label.affine, t1.affine)
        np.testing.assert_array_equal(np.asanyarray(label.dataobj), seg, err_msg=layout)
    assert {r: LAYOUTS["brats2020"].label(r) for r in SUB_REGIONS} == {
        "necrosis": 1, "edema": 2, "enhancing": 4
    }  # fmt: skip


@pytest.mark.slow
def test_a_case_of_mismatched_geometry_stops_before_any_file(small_datasets, tmp_path):
    dataset = tmp_path / "dataset"
    shutil.copytree(small_datasets["brats2020"], dataset)
    case = sorted(p for p in dataset.iterdir() if p.is_dir())[1]
    t2 = case / f"{case.name}_t2.nii.gz"
    image = nib.load(str(t2))
    shifted = image.affine.copy()
    shifted[0, 3] += 2.0  # 2 mm off
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), shifted), str(t2))
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=f"case {case.name}: file {t2} has an affine"):
        stack_modalities(str(dataset), str(out))
    assert not out.exists()
    result = subprocess.run(
        [sys.executable, "-m", "scripts.stack_modalities", "--dataset_dir", str(dataset),
         "--output_dir", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"error: case {case.name}: file {t2}")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
