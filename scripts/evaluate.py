"""Evaluate a folder of inference outputs against the ground truth, as the paper's table.

    python scripts/evaluate.py --predictions outputs/demo --dataset_dir data/demo --split testing \
        --output eval/diffusion --method "diffusion (DDIM 10)"

Per case: Dice, HD95 (mm) and Jaccard of the written segmentation (the N-sample ensemble) and,
when the run saved its samples (``--save_samples true``), of ensembles of the first 1..N samples;
and the uncertainty check: mean variance on the brain voxels the segmentation gets wrong vs right.
Writes ``cases.csv`` (one row per case and ensemble size) and ``summary.md`` (the paper's table
format, mean +- std over cases) under ``output``, and returns the summary rows.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.datalist import select_cases  # noqa: E402
from bundle.evaluation import segmentation_metrics, uncertainty_metrics  # noqa: E402
from bundle.io import output_path  # noqa: E402
from bundle.layouts import DatasetError  # noqa: E402
from bundle.options import run_cli  # noqa: E402
from bundle.validation import check_geometry, load_nifti, read_voxels, validate_case  # noqa: E402

METRICS = ("dice", "hd95", "jaccard")


def _read(path: Path, case_id: str) -> np.ndarray:
    return read_voxels(load_nifti(path, case_id), path, case_id)


def check_case(case: dict, predictions: Path) -> None:
    """Raise DatasetError, naming the case and file, unless the case passes validation and its
    segmentation and variance (and samples, if written) are there, readable, and in the label's
    shape and affine: checked for every case before any case is scored."""
    case_id = case["case_id"]
    validate_case(case)
    label_path = Path(case["label"])
    label = load_nifti(label_path, case_id)
    for key in ("pred", "variance", "samples"):
        path = output_path(predictions, case_id, key)
        if key != "samples" or path.is_file():
            check_geometry(case_id, path, load_nifti(path, case_id), label_path, label)


def evaluate_case(case: dict, predictions: Path) -> list[dict]:
    """Rows of metrics for one case: the written ensemble, then 1..N-sample ensembles."""
    case_id = case["case_id"]
    truth_image = nib.load(case["label"])
    truth = np.asanyarray(truth_image.dataobj) > 0
    spacing = tuple(float(s) for s in truth_image.header.get_zooms()[:3])
    seg = _read(output_path(predictions, case_id, "pred"), case_id)
    variance = _read(output_path(predictions, case_id, "variance"), case_id)
    images = case["image"] if isinstance(case["image"], list) else [case["image"]]
    brain = np.any([np.asanyarray(nib.load(p).dataobj) != 0 for p in images], axis=0)
    brain = brain.reshape(*truth.shape, -1).any(-1)
    row = {"case": case_id, "ensemble": "all", **segmentation_metrics(seg, truth, spacing)}
    row.update(uncertainty_metrics(variance, seg, truth, brain))
    rows = [row]
    samples_file = output_path(predictions, case_id, "samples")
    if samples_file.is_file():
        samples = _read(samples_file, case_id)
        for k in range(1, samples.shape[-1] + 1):
            ensemble = samples[..., :k].mean(-1) > 0.5
            rows.append(
                {"case": case_id, "ensemble": k, **segmentation_metrics(ensemble, truth, spacing)}
            )
    return rows


def summarise(rows: list[dict], method: str) -> list[dict]:
    """Mean and std over cases per ensemble size."""
    summary = []
    for ensemble in dict.fromkeys(r["ensemble"] for r in rows):
        group = [r for r in rows if r["ensemble"] == ensemble]
        entry = {"method": method, "ensemble": ensemble, "cases": len(group)}
        for key in (*METRICS, "var_wrong", "var_right", "var_ratio"):
            values = np.array([r[key] for r in group if key in r], dtype=float)
            if len(values):
                entry[key] = float(np.nanmean(values))
                entry[f"{key}_std"] = float(np.nanstd(values))
        summary.append(entry)
    return summary


def markdown(summary: list[dict]) -> str:
    """The paper's table: Dice, HD95, Jaccard (mean +- std), plus the variance check."""
    lines = [
        "| method | samples | cases | Dice | HD95 (mm) | Jaccard | var wrong / right |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        cells = [f"{s[m]:.3f} ± {s[m + '_std']:.3f}" for m in METRICS]
        var = f"{s['var_wrong']:.4f} / {s['var_right']:.5f}" if "var_wrong" in s else "(see 'all')"
        lines.append(
            f"| {s['method']} | {s['ensemble']} | {s['cases']} | {' | '.join(cells)} | {var} |"
        )
    return "\n".join(lines) + "\n"


def evaluate(
    predictions: str,
    dataset_dir: str,
    split: str = "testing",
    output: str = "eval",
    method: str = "diffusion ensemble",
    num_folds: int = 5,
    fold: int = 0,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> list[dict]:
    """Score every case of ``split`` (``training``/``validation``/``testing``, as the datalist
    splits ``dataset_dir``; ``all`` for every labelled case) found in ``predictions``."""
    selected = select_cases(dataset_dir, split, num_folds, fold, test_fraction, seed)
    cases = [case for case in selected if "label" in case]
    if not cases:
        raise DatasetError(f"dataset folder {dataset_dir}: no labelled case in split {split!r}")
    for case in cases:
        check_case(case, Path(predictions))
    rows = [row for case in cases for row in evaluate_case(case, Path(predictions))]
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(out / "cases.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(rows, method)
    (out / "summary.md").write_text(markdown(summary))
    print(markdown(summary))
    return summary


if __name__ == "__main__":
    run_cli(evaluate)
