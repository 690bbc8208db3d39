"""Metrics of the paper's table on hand-made volumes with known answers, and the eval script."""

from __future__ import annotations

import csv
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from bundle.evaluation import hd95, overlap, segmentation_metrics, uncertainty_metrics
from bundle.layouts import find_cases
from tests.conftest import REPO


def box(shape, lo, hi) -> np.ndarray:
    volume = np.zeros(shape, bool)
    volume[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return volume


def test_dice_and_jaccard_of_overlapping_boxes():
    a = box((10, 10, 10), (0, 0, 0), (4, 5, 5))  # 100 voxels
    b = box((10, 10, 10), (2, 0, 0), (6, 5, 5))  # 100 voxels, 50 shared
    dice, jaccard = overlap(a, b)
    assert dice == pytest.approx(0.5) and jaccard == pytest.approx(50 / 150)


def test_hd95_respects_anisotropic_spacing():
    a = box((20, 20, 20), (5, 5, 5), (6, 6, 6))
    b = box((20, 20, 20), (5, 5, 8), (6, 6, 9))  # 3 voxels away along the third axis
    assert hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(3.0)
    assert hd95(a, b, (1.0, 1.0, 2.5)) == pytest.approx(7.5)
    assert hd95(a, b, (0.5, 4.0, 1.0)) == pytest.approx(3.0)  # other axes do not matter


def test_empty_mask_conventions():
    empty = np.zeros((240, 240, 155), bool)
    some = box(empty.shape, (10, 10, 10), (12, 12, 12))
    assert segmentation_metrics(empty, empty, (1, 1, 1)) == {
        "dice": 1.0,
        "hd95": 0.0,
        "jaccard": 1.0,
    }
    one_empty = segmentation_metrics(some, empty, (1, 1, 1))
    assert one_empty["dice"] == 0 and one_empty["jaccard"] == 0
    assert one_empty["hd95"] == pytest.approx(373.13, abs=0.01)  # BraTS's value for its grid


def test_variance_on_wrong_and_right_voxels():
    truth = box((8, 8, 8), (2, 2, 2), (6, 6, 6))
    pred = box((8, 8, 8), (2, 2, 2), (6, 6, 5))  # misses one layer of 16 voxels
    variance = np.where(pred != truth, 0.2, 0.01)
    brain = np.ones_like(truth)
    stats = uncertainty_metrics(variance, pred, truth, brain)
    assert stats["var_wrong"] == pytest.approx(0.2) and stats["var_right"] == pytest.approx(0.01)
    assert stats["var_ratio"] == pytest.approx(20.0)


def test_evaluate_script_scores_a_prediction_folder(small_datasets, tmp_path):
    cases = find_cases(small_datasets["brats2020"])
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for i, case in enumerate(cases):
        label = nib.load(case["label"])
        truth = (np.asanyarray(label.dataobj) > 0).astype(np.uint8)
        seg = truth if i == 0 else np.zeros_like(truth)  # case 0 perfect, the others empty
        samples = np.stack([seg, seg, truth], -1).astype(np.float32)
        for name, data in (
            ("seg", seg),
            ("mean", samples.mean(-1)),
            ("var", samples.var(-1)),
            ("samples", samples),
        ):
            nib.save(
                nib.Nifti1Image(data, label.affine),
                str(predictions / f"{case['case_id']}_{name}.nii.gz"),
            )
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "evaluate.py"),
            "--predictions",
            str(predictions),
            "--dataset_dir",
            str(small_datasets["brats2020"]),
            "--split",
            "all",
            "--output",
            str(tmp_path / "eval"),
            "--method",
            "test",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(open(tmp_path / "eval" / "cases.csv")))
    by_case = {(r["case"], r["ensemble"]): r for r in rows}
    first, second = cases[0]["case_id"], cases[1]["case_id"]
    assert float(by_case[first, "all"]["dice"]) == 1.0
    assert float(by_case[second, "all"]["dice"]) == 0.0
    assert float(by_case[second, "3"]["dice"]) == 0.0  # 1 of 3 samples right: mean < 0.5
    assert float(by_case[second, "1"]["dice"]) == 0.0
    summary = (tmp_path / "eval" / "summary.md").read_text()
    assert "| test | all | 3 |" in summary and "Dice" in summary
