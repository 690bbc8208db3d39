"""The variance-smoothing study (scripts/variance_smoothing_study.py): a Gaussian along the
slice axis, through its command line on NIfTI files."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from bundle.data.datalist import find_cases
from bundle.ensemble.outputs import slice_axis, smooth_across_slices
from tests.bundle_cli import run_script
from tests.predictions import write_predictions


def test_the_slice_axis_is_read_from_the_affine():
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    assert slice_axis(affine) == 2
    sagittal = affine[:, [2, 0, 1, 3]]  # voxel axis 0 runs inferior-superior
    assert slice_axis(sagittal) == 0
    variance = np.zeros((3, 4, 9), dtype=np.float32)
    variance[1, 2, 4] = 1.0
    smoothed = smooth_across_slices(variance, affine, sigma_mm=2.5)  # one slice's spacing
    assert np.count_nonzero(smoothed[1, 2]) > 1 and np.count_nonzero(smoothed[:, :, 4]) == 1
    np.testing.assert_allclose(smoothed.sum(), 1.0, rtol=1e-3)
    assert smooth_across_slices(variance, affine, 0) is variance


def test_pooling_the_slices_marks_errors_that_one_slice_missed(small_datasets, tmp_path):
    """The segmentation is the tumour moved by two voxels; the variance marks its errors on
    every other slice only, so smoothing across slices gives the others variance too."""
    dataset = small_datasets["brats2020"]
    predictions = tmp_path / "predictions"
    cases = find_cases(dataset)
    for case in cases:
        label = nib.load(case["label"])
        tumour = np.asanyarray(label.dataobj) > 0
        seg = np.roll(tumour, 2, axis=0)
        axis = slice_axis(label.affine)
        every_other = (np.indices(tumour.shape)[axis] % 2 == 0).astype(np.float32)
        variance = (seg != tumour) * every_other * 0.2
        write_predictions(predictions, case, seg, seg.astype(np.float32), variance)
    report = tmp_path / "smoothing.md"
    result = run_script(
        "variance_smoothing_study", "--dataset_dir", dataset, "--predictions", predictions,
        "--split", "all", "--sigmas", "[2]", "--output", report,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("|") for line in report.read_text().splitlines() if "BraTS" in line]
    assert sorted(row[2].strip() for row in rows if row[1].strip() == "0") == sorted(
        c["case_id"] for c in cases
    )
    for case in cases:
        raw, smoothed = (
            [float(v) for v in row[3:5]] for row in rows if row[2].strip() == case["case_id"]
        )
        assert smoothed[0] > raw[0] + 0.05  # AUROC
        assert raw[1] < 0.6 and smoothed[1] > 0.85  # errors with variance

    bad = run_script(
        "variance_smoothing_study", "--dataset_dir", dataset, "--predictions", predictions,
        "--split", "all", "--sigmas", "[-1]",
    )  # fmt: skip
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "--sigmas must be numbers >= 0 (mm), got [-1]" in bad.stderr
