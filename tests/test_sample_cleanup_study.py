"""The per-sample clean-up study (scripts/sample_cleanup_study.py), through its command line on
NIfTI files: a stray part of one sample goes at the taus below its values, the tumour stays."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bundle.data.datalist import find_cases
from bundle.io.outputs import output_path
from tests.bundle_cli import run_script
from tests.predictions import write_predictions


def test_stray_parts_of_a_sample_are_removed_below_tau(small_datasets, tmp_path):
    dataset = small_datasets["brats2020"]
    predictions, out = tmp_path / "predictions", tmp_path / "study"
    cases = find_cases(dataset)
    strays = {}
    for case in cases:  # 3 samples: the tumour at 0.9; in the first, 8 brain voxels at 0.3
        tumour = np.asanyarray(nib.load(case["label"]).dataobj) > 0
        brain = np.asanyarray(nib.load(case["image"][0]).dataobj) != 0
        far = np.where(brain, ndimage.distance_transform_edt(~tumour), 0)
        centre = np.unravel_index(far.argmax(), far.shape)  # the brain voxel farthest from it
        strays[case["case_id"]] = stray = tuple(slice(c - 1, c + 1) for c in centre)
        samples = np.stack([np.where(tumour, 0.9, 0.0)] * 3, -1).astype(np.float32)
        samples[(*stray, 0)] = 0.3
        mean = samples.mean(-1)
        write_predictions(predictions, case, mean > 0.4, mean, samples.var(-1), samples)
    result = run_script(
        "sample_cleanup_study", "--dataset_dir", dataset, "--predictions", predictions,
        "--split", "all", "--taus", "[0.5,0.25]", "--output", out,
        "--min_component_fraction", "0",  # every part of the tumour is core
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for case in cases:
        cleaned = {
            name: nib.load(output_path(out / name, case["case_id"], "samples")).get_fdata()
            for name in ("none", "tau 0.5", "tau 0.25")
        }
        stray = strays[case["case_id"]]
        assert [s[(*stray, 0)].max() for s in cleaned.values()] == pytest.approx([0.3, 0.3, 0])
        elsewhere = np.ones(cleaned["none"].shape[:3], bool)
        elsewhere[stray] = False
        for s in cleaned.values():
            np.testing.assert_array_equal(s[elsewhere], cleaned["none"][elsewhere])
    rows = list(csv.DictReader(open(out / "cases.csv")))
    ece = {(r["method"], r["case"]): float(r["ece"]) for r in rows if r["ensemble"] == "all"}
    for case in cases:  # the stray mass was on healthy brain voxels: the mean's ECE falls
        assert ece["tau 0.25", case["case_id"]] < ece["none", case["case_id"]]


def test_a_run_without_saved_samples_is_one_line(small_datasets, tmp_path):
    dataset = small_datasets["brats2020"]
    for case in find_cases(dataset):
        tumour = (np.asanyarray(nib.load(case["label"]).dataobj) > 0).astype(np.float32)
        write_predictions(tmp_path / "predictions", case, tumour, tumour, tumour * 0)
    result = run_script(
        "sample_cleanup_study", "--dataset_dir", dataset, "--predictions",
        tmp_path / "predictions", "--split", "all", "--output", tmp_path / "study",
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "has no saved samples (run inference with --save_samples true)" in result.stderr
