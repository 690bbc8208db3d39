"""The mean-smoothing study (scripts/mean_smoothing_study.py) through its command line on NIfTI
files: a mean that misses every other slice of the tumour is made whole by pooling slices."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from bundle.data.datalist import find_cases
from bundle.ensemble.outputs import slice_axis
from tests.bundle_cli import run_script
from tests.predictions import write_predictions


def test_pooling_the_mean_over_slices_fills_the_slices_it_missed(small_datasets, tmp_path):
    dataset = small_datasets["brats2020"]
    for name in ("a", "b"):  # two networks' outputs, alike
        for case in find_cases(dataset):
            label = nib.load(case["label"])
            truth = np.asanyarray(label.dataobj) > 0
            every_other = np.indices(truth.shape)[slice_axis(label.affine)] % 2 == 0
            mean = np.where(truth, np.where(every_other, 0.3, 0.9), 0.0).astype(np.float32)
            write_predictions(tmp_path / name, case, mean > 0.4, mean, mean * 0.1)
    report = tmp_path / "smoothing.md"
    result = run_script(
        "mean_smoothing_study", "--dataset_dir", dataset, "--split", "all",
        "--predictions", f"['{tmp_path / 'a'}','{tmp_path / 'b'}']", "--sigmas", "[1]",
        "--min_component_fraction", "0", "--output", report,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = report.read_text().split("\n\n")[1].splitlines()[2:]
    dice = {
        float(line.split("|")[1]): [float(v) for v in line.split("|")[2:-1]] for line in summary
    }
    # sigma 0: about half the tumour's slices below 0.4; sigma 1 mm: 0.3 and 0.9 pooled above it
    # (only the small tumours' first and last slices fall below it then)
    assert dice[0][0] < 0.7 and dice[1][0] > dice[0][0] + 0.1
    assert dice[1][-2:] == [dice[1][0]] * 2  # each folder's mean Dice, alike
    bad = run_script(
        "mean_smoothing_study", "--dataset_dir", dataset, "--predictions", tmp_path / "a",
        "--sigmas", "[-1]",
    )  # fmt: skip
    assert bad.returncode == 2 and "--sigmas must be numbers >= 0 (mm), got [-1]" in bad.stderr
