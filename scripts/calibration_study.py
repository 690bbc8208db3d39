"""Does a recalibration of the ensemble's mean map carry from one case to another? (issue 16)

    python -m scripts.calibration_study --dataset_dir ../shared/data/brats18 \
        --split validation --split_file configs/brats18_split.json \
        --predictions outputs/validation [--output docs/calibration.md]

Leave one case out over the labelled cases of ``split`` (their inference outputs in
``predictions``): each map is fitted on the brain voxels of the other cases' whole-tumour mean
maps and applied to the case left out, whose Dice (calibrated mean > 0.5) and ECE of the mean
map are reported against the raw map's, with their means. The maps: ``isotonic`` (20
equal-width bins of the mean, each bin's tumour fraction made monotone, linear interpolation
between the bins' mean values) and ``platt`` (a logistic regression on the mean's logit: two
parameters).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import isotonic_regression, minimize
from scipy.special import expit, logit

from bundle.data.layouts import DatasetError
from bundle.data.regions import region_channel, region_names
from bundle.ensemble.inferers import THRESHOLD
from bundle.evaluation.metrics import expected_calibration_error, overlap
from bundle.evaluation.scoring import loaded_cases
from bundle.io.atomic import publish
from bundle.workflow.options import run_cli

Map = Callable[[np.ndarray], np.ndarray]


def isotonic_map(mean: np.ndarray, truth: np.ndarray, bins: int = 20) -> Map:
    """Monotone map of the mean: each non-empty bin's tumour fraction, made non-decreasing
    (weighted by the bin's voxels), interpolated between the bins' mean values."""
    index = np.minimum((mean * bins).astype(int), bins - 1)
    count = np.bincount(index, minlength=bins)
    filled = count > 0
    centre = np.bincount(index, mean, bins)[filled] / count[filled]
    fraction = np.bincount(index, truth, bins)[filled] / count[filled]
    fitted = isotonic_regression(fraction, weights=count[filled].astype(float)).x
    return lambda p: np.interp(p, centre, fitted)


def platt_map(mean: np.ndarray, truth: np.ndarray, eps: float = 1e-4) -> Map:
    """Logistic regression on the mean's logit (the mean clipped to [eps, 1 - eps])."""
    x = logit(np.clip(mean, eps, 1 - eps))

    def loss(w: np.ndarray) -> float:
        q = np.clip(expit(w[0] * x + w[1]), 1e-12, 1 - 1e-12)
        return float(-np.mean(truth * np.log(q) + (1 - truth) * np.log(1 - q)))

    w = minimize(loss, np.array([1.0, 0.0]), method="Nelder-Mead").x
    return lambda p: expit(w[0] * logit(np.clip(p, eps, 1 - eps)) + w[1])


MAPS: dict[str, Callable[[np.ndarray, np.ndarray], Map]] = {
    "isotonic": isotonic_map,
    "platt": platt_map,
}


def study(
    dataset_dir: str,
    predictions: str,
    split: str = "validation",
    split_file: str | None = None,
    regions: str = "wt",
    output: str | None = None,
) -> list[dict]:
    """Leave each case out in turn; print (and write to ``output``) a markdown table, and return
    its rows: per case and map, Dice and ECE raw and calibrated."""
    wt = region_channel(region_names(regions), "wt")
    cases = {}
    for loaded in loaded_cases(dataset_dir, predictions, split, split_file, regions):
        brain = loaded["brain"]
        cases[loaded["case_id"]] = (loaded["mean"][..., wt][brain], loaded["label"][brain] > 0)
    if len(cases) < 2:
        raise DatasetError(
            f"dataset folder {dataset_dir}, split {split!r}: leaving one case out needs at least "
            f"2 labelled cases, found {len(cases)}"
        )
    rows = []
    for name, fit in MAPS.items():
        for left, (mean, truth) in cases.items():
            others = [c for c in cases if c != left]
            fitted = fit(*(np.concatenate([cases[c][i] for c in others]) for i in (0, 1)))
            calibrated = fitted(mean)
            rows.append(
                {
                    "map": name,
                    "case": left,
                    "dice_raw": overlap(mean > THRESHOLD, truth)[0],
                    "dice_calibrated": overlap(calibrated > THRESHOLD, truth)[0],
                    "ece_raw": expected_calibration_error(mean, truth),
                    "ece_calibrated": expected_calibration_error(calibrated, truth),
                }
            )
    publish(markdown(rows), output)
    return rows


def markdown(rows: list[dict]) -> str:
    """One line per map and case left out, then each map's means."""
    lines = [
        "| map | case left out | Dice raw → calibrated | ECE raw → calibrated |",
        "|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["map"] for r in rows):
        group = [r for r in rows if r["map"] == name]
        for r in [*group, {"case": "**mean**", **_means(group)}]:
            lines.append(
                f"| {name} | {r['case']} | {r['dice_raw']:.3f} → {r['dice_calibrated']:.3f} "
                f"| {r['ece_raw']:.4f} → {r['ece_calibrated']:.4f} |"
            )
    return "\n".join(lines) + "\n"


def _means(rows: list[dict]) -> dict:
    keys = ("dice_raw", "dice_calibrated", "ece_raw", "ece_calibrated")
    return {key: float(np.mean([r[key] for r in rows])) for key in keys}


if __name__ == "__main__":
    run_cli(study)
