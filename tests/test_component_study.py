"""The clean-up study (scripts/component_study.py) scores each way of removing small parts,
through its command line on NIfTI files."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from bundle.data.datalist import find_cases
from tests.bundle_cli import run_script
from tests.predictions import write_predictions


def test_each_clean_up_is_scored_on_each_case(small_datasets, tmp_path):
    dataset = small_datasets["brats2020"]
    predictions = tmp_path / "predictions"
    cases = find_cases(dataset)
    for case in cases:  # the mean finds the tumour and an 8-voxel (0.008 ml) stray part
        tumour = np.asanyarray(nib.load(case["label"]).dataobj) > 0
        stray = np.zeros_like(tumour)
        stray[:2, :2, :2] = True
        mean = np.where(tumour | stray, 0.9, 0.05)
        centre = tuple(int(i.mean()) for i in np.nonzero(tumour))
        mean[centre] = 0.05  # a hole inside the tumour (its label: tumour)
        write_predictions(predictions, case, mean > 0.5, mean, mean * 0.1)
    report = tmp_path / "components.md"
    result = run_script(
        "component_study", "--dataset_dir", dataset, "--predictions", predictions,
        "--split", "all", "--fractions", "[0,0.5]", "--sizes_ml", "[0.005,0.01]",
        "--fill_holes_after", "[0.5]",
        "--output", report,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {
        cells[1].strip(): [float(v) for v in cells[2].split("|")[0].split()]
        for line in report.read_text().splitlines()[2:]
        for cells in [line.split("|", 2)]
    }
    assert list(rows) == [
        "fraction 0", "fraction 0.5", "at least 0.005 ml", "at least 0.01 ml",
        "fraction 0.5, holes filled in 3-D", "fraction 0.5, holes filled by slice",
    ]  # fmt: skip
    # the stray part is far smaller than each tumour's largest part (59 voxels or more); what
    # the clean-ups that remove it miss is a 1-voxel part of two labels
    found, kept = rows["fraction 0.5"][0], rows["fraction 0"][0]
    assert found > 0.995 and kept < 0.99
    assert rows["at least 0.01 ml"][0] > 0.995 and rows["at least 0.005 ml"][0] < 0.99
    # the hole inside each tumour costs the clean-up alone a voxel, which filling gives back
    for filled in ("in 3-D", "by slice"):
        assert rows[f"fraction 0.5, holes filled {filled}"][0] > found


def test_each_threshold_of_the_mean_is_scored(small_datasets, tmp_path):
    dataset = small_datasets["brats2020"]
    predictions = tmp_path / "predictions"
    for case in find_cases(dataset):  # a mean of 0.45 on the tumour: found only below 0.45
        tumour = np.asanyarray(nib.load(case["label"]).dataobj) > 0
        mean = np.where(tumour, 0.45, 0.05)
        write_predictions(predictions, case, mean > 0.4, mean, mean * 0.1)
    report = tmp_path / "thresholds.md"
    result = run_script(
        "component_study", "--dataset_dir", dataset, "--predictions", predictions,
        "--split", "all", "--fractions", "[0]", "--sizes_ml", "[]", "--fill_holes_after", "[]",
        "--thresholds", "[0.4,0.5]", "--output", report,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    dice = {
        cells[1].strip(): float(cells[2].split("|")[0])
        for line in report.read_text().splitlines()[2:]
        for cells in [line.split("|", 2)]
    }
    assert dice == {"mean > 0.4, fraction 0": 1.0, "mean > 0.5, fraction 0": 0.0}
