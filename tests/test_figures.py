"""The figures script writes its PNGs from small inputs of each kind it reads."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bundle.data.layouts import find_cases
from bundle.evaluation.figures import ensemble, reliability, steps
from tests.predictions import write_predictions

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_dice_against_ensemble_size(tmp_path):
    rows = [
        {"method": m, "case": c, "region": "wt", "ensemble": e, "dice": d}
        for m, sizes in (("diffusion", ["all", "1", "2"]), ("U-Net", ["all"]))
        for c in ("a", "b")
        for e, d in zip(sizes, (0.9, 0.8, 0.85), strict=False)
    ]
    with open(tmp_path / "cases.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert_png(ensemble(str(tmp_path / "cases.csv"), str(tmp_path / "ensemble.png")))


def test_dice_against_steps_from_the_sweep_table(tmp_path):
    table = [
        "| sampler | steps | Dice | variance ratio wrong/right | seconds |",
        "|---|---|---|---|---|",
        "| ddpm | 1000 | 0.98 | 135.3 | 186.0 |",
        *(f"| {s} | {k} | 0.97 | {100 + k} | 1.0 |" for s in ("ddim", "dpmpp_2m") for k in (5, 10)),
    ]
    (tmp_path / "sweep.md").write_text("\n".join(table) + "\n")
    assert_png(steps(str(tmp_path / "sweep.md"), str(tmp_path / "steps.png")))
    (tmp_path / "bad.md").write_text("| ddim | 5 | 0.9 | 1.0 | 1.0 |\n")
    with pytest.raises(ValueError, match="no 'ddpm | 1000' row"):
        steps(str(tmp_path / "bad.md"), str(tmp_path / "bad.png"))


def test_reliability_diagram_from_prediction_folders(small_datasets, tmp_path, caplog):
    dataset = tmp_path / "data"
    shutil.copytree(small_datasets["brats2020"], dataset)
    predictions = dataset / "pred"  # inside the dataset folder: not read as a case
    for case in find_cases(dataset):
        truth = np.asanyarray(nib.load(case["label"]).dataobj) > 0
        mean = np.where(truth, 0.8, 0.05)
        write_predictions(predictions, case, mean > 0.5, mean, np.zeros(mean.shape))
    output = reliability(
        str(predictions), str(dataset), split="all", output=str(tmp_path / "reliability.png")
    )
    assert_png(output)
    assert "skipped folder" not in caplog.text
