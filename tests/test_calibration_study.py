"""The calibration study (scripts/calibration_study.py) fits each map on the other cases and
scores the case left out, through its command line on NIfTI files."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from bundle.data.datalist import find_cases
from tests.bundle_cli import run_script
from tests.predictions import write_predictions


def write_outputs(dataset, predictions) -> list[str]:
    """Under-confident mean maps: 0.35 on the tumour, 0.02 elsewhere, so the raw segmentation
    (mean > 0.5) is empty and a calibration fitted on the other cases should recover it."""
    cases = find_cases(dataset)
    for case in cases:
        tumour = np.asanyarray(nib.load(case["label"]).dataobj) > 0
        mean = np.where(tumour, 0.35, 0.02)
        write_predictions(predictions, case, 0 * tumour, mean, mean * 0.1)
    return [c["case_id"] for c in cases]


def test_each_map_is_fitted_on_the_other_cases_and_scored_on_the_one_left_out(
    small_datasets, tmp_path
):
    dataset = small_datasets["brats2020"]
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    cases = write_outputs(dataset, predictions)
    report = tmp_path / "calibration.md"
    result = run_script(
        "calibration_study", "--dataset_dir", dataset, "--predictions", predictions,
        "--split", "all", "--output", report,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = report.read_text().splitlines()
    for name in ("isotonic", "platt"):
        rows = [line.split("|") for line in lines if line.startswith(f"| {name} | BraTS")]
        assert sorted(row[2].strip() for row in rows) == sorted(cases)
        for row in rows:  # raw: nothing above 0.5; calibrated: the tumour found, ECE down
            dice_raw, dice_calibrated = (float(v) for v in row[3].split("→"))
            ece_raw, ece_calibrated = (float(v) for v in row[4].split("→"))
            assert dice_raw == 0.0 and dice_calibrated > 0.95
            assert ece_calibrated < ece_raw / 5


def test_one_case_cannot_be_left_out(small_datasets, tmp_path):
    dataset = small_datasets["brats2020"]
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    write_outputs(dataset, predictions)
    split = tmp_path / "split.json"
    cases = sorted(p.name for p in dataset.iterdir() if p.is_dir())
    split.write_text(f'{{"training": {cases[:2]}, "validation": {cases[2:]}}}'.replace("'", '"'))
    result = run_script(
        "calibration_study", "--dataset_dir", dataset, "--predictions", predictions,
        "--split_file", split,
    )  # fmt: skip
    assert result.returncode != 0
    assert "split 'validation': leaving one case out needs at least 2 labelled cases, found 1" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
