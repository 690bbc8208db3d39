"""3D Slicer outputs: the .seg.nrrd Segmentation beside the NIfTI maps, read back with slicerio and
pynrrd (not our code), and the maps' display windows."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import slicerio

from bundle.data.synthetic import make_demo_data
from bundle.io.outputs import output_path
from bundle.io.slicer import write_seg_nrrd
from tests.bundle_cli import assert_ok
from tests.test_inference import infer, reorient_case, tiny_weights

LPS = np.diag([-1.0, -1.0, 1.0])


def assert_geometry(header: dict, affine: np.ndarray) -> None:
    """NRRD LPS space directions (one row per voxel axis) and origin against a RAS affine."""
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(header["space directions"], (LPS @ affine[:3, :3]).T, atol=1e-5)
    np.testing.assert_allclose(header["space origin"], LPS @ affine[:3, 3], atol=1e-5)


def test_whole_tumour_segmentation_file(tmp_path):
    labelmap = np.zeros((5, 6, 7), np.uint8)
    labelmap[1:3, 2:5, 3] = 1
    affine = np.array([[0, 0, 2.0, -10], [-1.5, 0, 0, 20], [0, 1.2, 0, 5], [0, 0, 0, 1]])
    path = write_seg_nrrd(labelmap, affine, "wt", "brats2020", tmp_path / "c.seg.nrrd")
    segmentation = slicerio.read_segmentation(str(path))
    assert [(s["name"], s["labelValue"]) for s in segmentation["segments"]] == [("whole tumour", 1)]
    voxels, header = nrrd.read(str(path))
    np.testing.assert_array_equal(voxels, labelmap)
    assert_geometry(header, affine)
    assert [p.name for p in tmp_path.iterdir()] == ["c.seg.nrrd"]  # no temporary left


@pytest.mark.slow
def test_inference_writes_a_brats_segmentation_in_the_input_geometry(tmp_path):
    source = make_demo_data(str(tmp_path / "src"), num_cases=1, seed=3, shape=(56, 48, 32))[0]
    case = reorient_case(Path(source), tmp_path / "data")  # oblique, permuted, anisotropic
    weights = tiny_weights(tmp_path / "model.pt", regions="wt_tc_et")
    out = tmp_path / "out"
    assert_ok(infer(case, out, weights, regions="wt_tc_et", num_samples=2, quicklook="false"))

    seg_image = nib.load(str(output_path(out, case.name, "pred")))
    seg = np.asanyarray(seg_image.dataobj)
    assert seg.dtype == np.uint8
    path = output_path(out, case.name, "seg_nrrd")
    segmentation = slicerio.read_segmentation(str(path))
    names = {s["name"]: s["labelValue"] for s in segmentation["segments"]}
    assert names == {"necrosis": 1, "edema": 2, "enhancing": 4}  # BraTS 2020 numbering
    assert all(len(s["color"]) == 3 for s in segmentation["segments"])
    voxels, header = nrrd.read(str(path))
    np.testing.assert_array_equal(voxels, seg)
    assert set(np.unique(seg)) - {0} and set(np.unique(seg)) <= {0, 1, 2, 4}
    reference = nib.load(str(case / f"{case.name}_t1.nii.gz"))
    np.testing.assert_allclose(seg_image.affine, reference.affine, atol=1e-4)
    assert_geometry(header, reference.affine)

    mean = nib.load(str(output_path(out, case.name, "mean")))
    var = nib.load(str(output_path(out, case.name, "variance")))
    assert (mean.header["cal_min"], mean.header["cal_max"]) == (0, 1)
    peak = float(np.asanyarray(var.dataobj).max())
    assert 0 < peak <= 0.25
    assert var.header["cal_min"] == 0 and np.isclose(var.header["cal_max"], peak)
