"""Scoring folders of inference outputs against the labels of a split, as the paper's table.

One implementation behind ``scripts/evaluate.py``, ``configs/evaluate.yaml`` and the figures.
Per case and region (wt, or wt, tc, et): Dice, HD95 (mm) and Jaccard of the written
segmentation (the N-sample ensemble, ``ensemble`` "all") and, when the run saved its samples,
of the ensembles of the first 1..N samples and of each sample alone (averaged, "each"); and the
uncertainty quality of each of these ensembles' variance and mean maps on the brain's voxels
(:mod:`bundle.evaluation.metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from bundle.data.datalist import select_cases
from bundle.data.layouts import DatasetError
from bundle.data.normalisation import brain_mask
from bundle.data.regions import region_names, region_values, regions_to_labelmap
from bundle.data.validation import check_geometry, load_nifti, read_voxels, validate_case
from bundle.ensemble.inferers import STATISTICS, THRESHOLD
from bundle.ensemble.outputs import (
    MIN_COMPONENT_FRACTION,
    SEGMENTATION_THRESHOLD,
    VARIANCE_SLICE_SIGMA_MM,
    segment,
    smooth_across_slices,
)
from bundle.evaluation.metrics import (
    expected_calibration_error,
    expected_dice_gap,
    nan_mean,
    segmentation_metrics,
    spearman,
    uncertainty_metrics,
)
from bundle.io.atomic import write_csv, write_text
from bundle.io.outputs import output_path
from bundle.workflow.options import OptionError

METRICS: tuple[str, ...] = ("dice", "hd95", "jaccard")
UNCERTAINTY: tuple[str, ...] = (
    "var_wrong",
    "var_right",
    "var_ratio",
    "var_error_corr",
    "auroc",
    "errors_with_variance",
    "ece",
    "ueo",
    "qu_brats",
    "case_uncertainty",
)
"""Columns of the summary, after the segmentation metrics (cases.csv has the QU-BraTS parts too)."""


def _load(path: Path, case_id: str) -> np.ndarray:
    return read_voxels(load_nifti(path, case_id), path, case_id)


def check_case(case: dict, predictions: str | Path, regions: str = "wt") -> None:
    """Raise DatasetError, naming the case and file, unless the case passes validation and its
    segmentation, mean, variance and votes (and samples, if written) are there, readable, in
    the label's shape and affine, and with the channels of ``regions``, and the samples those whose
    mean is the mean map: checked for every case before any case is scored."""
    case_id = case["case_id"]
    validate_case(case)
    label_path = Path(case["label"])
    label = load_nifti(label_path, case_id)
    for key in ("pred", *STATISTICS, "samples"):
        path = output_path(predictions, case_id, key)
        if key != "samples" or path.is_file():
            image = load_nifti(path, case_id)
            check_geometry(case_id, path, image, label_path, label)
            if key in STATISTICS:
                _check_channels(case_id, image.shape, path, regions)
    if output_path(predictions, case_id, "samples").is_file():
        _check_samples_match(case_id, predictions, regions)


SAMPLES_MEAN_ATOL = 1e-3
"""How far the mean of the saved samples may be from the saved mean map: both come out of one
interpolation back to the input grid, which is linear, so only float rounding separates them."""


def _check_samples_match(case_id: str, predictions: str | Path, regions: str) -> None:
    """Refuse samples that are not those of the mean map beside them (left by an earlier run
    into the same folder), which would mix two runs into the 1..N-sample rows."""
    samples_path, mean_path = (output_path(predictions, case_id, k) for k in ("samples", "mean"))
    samples, mean = _load(samples_path, case_id), _load(mean_path, case_id)
    channels = len(region_names(regions))
    mean = mean.reshape(*mean.shape[:3], channels)
    if samples.shape[:3] != mean.shape[:3] or math.prod(samples.shape[3:]) % channels:
        raise DatasetError(
            f"case {case_id}: file {samples_path} has shape {samples.shape}, not samples of "
            f"{channels} region(s) in the shape of {mean_path}"
        )
    averaged = samples.reshape(*mean.shape[:3], -1, channels).mean(-2)
    difference = float(np.abs(averaged - mean).max())
    if difference > SAMPLES_MEAN_ATOL:
        raise DatasetError(
            f"case {case_id}: file {samples_path} is not from the run that wrote {mean_path} "
            f"(their means differ by up to {difference:.3g}); rerun inference with "
            "--overwrite true"
        )


def _check_channels(case_id: str, shape: tuple[int, ...], path: Path, regions: str) -> None:
    """Refuse a map (mean, variance, votes) written for other regions than ``regions``."""
    channels = shape[3] if len(shape) > 3 else 1
    needed = len(region_names(regions))
    if channels != needed:
        raise DatasetError(
            f"case {case_id}: prediction file {path} has {channels} channel(s), regions "
            f"{regions!r} needs {needed}"
        )


def _with_channels(case_id: str, array: np.ndarray, path: Path, regions: str) -> np.ndarray:
    """A prediction map as (X, Y, Z, C), refusing one written for other regions."""
    _check_channels(case_id, array.shape, path, regions)
    return array[..., None] if array.ndim == 3 else array


def labelled_cases(
    dataset_dir: str,
    split: str = "testing",
    num_folds: int = 5,
    fold: int = 0,
    test_fraction: float = 0.2,
    seed: int = 0,
    split_file: str | None = None,
    exclude: Sequence[str | Path] = (),
) -> list[dict]:
    """The labelled cases of one side of the training split (``all``: the whole folder);
    ``exclude``: folders under ``dataset_dir`` that hold no cases (prediction folders)."""
    selected = select_cases(
        dataset_dir, split, num_folds, fold, test_fraction, seed, split_file, exclude
    )
    cases = [case for case in selected if "label" in case]
    if not cases:
        raise DatasetError(f"dataset folder {dataset_dir}: no labelled case in split {split!r}")
    return cases


def loaded_cases(
    dataset_dir: str, predictions: str, split: str, split_file: str | None, regions: str = "wt"
) -> Iterator[dict]:
    """Each labelled case of ``split`` with its outputs in ``predictions`` loaded, without the
    samples (:func:`load_case`); a missing or odd file is one clear error
    (:func:`check_case`)."""
    for case in labelled_cases(dataset_dir, split, split_file=split_file, exclude=[predictions]):
        check_case(case, predictions, regions)
        yield load_case(case, predictions, regions, with_samples=False)


def load_case(
    case: dict, predictions: str | Path, regions: str = "wt", with_samples: bool = True
) -> dict:
    """A case's label, brain mask, spacing and affine with its predictions: ``seg`` (labelmap in the
    case's numbering), ``mean``, ``variance`` and ``votes`` (X, Y, Z, C) and ``samples``
    (X, Y, Z, N, C; None when the run did not save them or ``with_samples`` is false)."""
    names = region_names(regions)
    label_image = nib.load(case["label"])
    label = np.asanyarray(label_image.dataobj)
    case_id = case["case_id"]
    files = {key: output_path(predictions, case_id, key) for key in ("pred", *STATISTICS)}
    seg = _load(files["pred"], case_id)
    if seg.shape != label.shape:
        raise DatasetError(
            f"case {case_id}: prediction shape {seg.shape} differs from label {label.shape}"
        )
    images = case["image"] if isinstance(case["image"], list) else [case["image"]]
    # the brain as the model's normalisation finds it (channels first)
    channels = [np.asanyarray(nib.load(p).dataobj, dtype=np.float32) for p in images]
    stacked = np.concatenate([c.reshape(*label.shape, -1) for c in channels], axis=-1)
    brain = brain_mask(np.moveaxis(stacked, -1, 0))
    samples_file = output_path(predictions, case_id, "samples")
    samples = None
    if with_samples and samples_file.is_file():
        flat = _load(samples_file, case_id)
        samples = flat.reshape(*label.shape, -1, len(names))  # sample-major channels
    return {
        "case_id": case_id,
        "layout": case["layout"],
        "label": label,
        # from the affine, as every step reads geometry (bundle.data.validation), not pixdim
        "spacing": tuple(float(s) for s in nib.affines.voxel_sizes(label_image.affine)[:3]),
        "affine": label_image.affine,
        "brain": brain,
        "seg": seg,
        **{
            key: _with_channels(case_id, _load(files[key], case_id), files[key], str(regions))
            for key in STATISTICS
        },
        "samples": samples,
    }


EACH = "each"
"""The ``ensemble`` of the rows that average every saved sample scored alone: the one-sample
figure an ensemble's gain is measured against (the first sample alone is one draw's luck)."""


def sample_statistics(
    samples: np.ndarray,
    volumes: dict,
    regions: str,
    min_component_fraction: float,
    variance_slice_sigma_mm: float,
    segmentation_threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labelmap, mean, variance and votes of samples (X, Y, Z, k, C), segmented as inference
    does (mean > ``segmentation_threshold``, small parts removed, nested), the variance pooled
    over slices as it does."""
    mean, variance, votes = samples.mean(-2), samples.var(-2), (samples > THRESHOLD).mean(-2)
    variance = smooth_across_slices(variance, volumes["affine"], variance_slice_sigma_mm)
    masks = segment(
        torch.from_numpy(np.moveaxis(mean, -1, 0)), min_component_fraction, segmentation_threshold
    )
    seg = regions_to_labelmap(masks, region_names(regions), volumes["layout"])[0].numpy()
    return seg, mean, variance, votes


def ensembles(
    volumes: dict,
    regions: str,
    min_component_fraction: float = MIN_COMPONENT_FRACTION,
    variance_slice_sigma_mm: float = VARIANCE_SLICE_SIGMA_MM,
    segmentation_threshold: float = SEGMENTATION_THRESHOLD,
) -> Iterator[tuple[str | int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(ensemble size, labelmap, mean, variance and votes (X, Y, Z, C)) of the written ensemble
    ("all"), of the first 1..N saved samples and of each saved sample alone (:data:`EACH`),
    the latter segmented with ``segmentation_threshold`` and ``min_component_fraction`` and
    their variance pooled over slices with ``variance_slice_sigma_mm`` as inference does."""
    yield "all", volumes["seg"], *(volumes[key] for key in STATISTICS)
    samples = volumes["samples"]
    count = 0 if samples is None else samples.shape[-2]
    settings = (
        volumes,
        regions,
        min_component_fraction,
        variance_slice_sigma_mm,
        segmentation_threshold,
    )
    for k in range(1, count + 1):
        yield k, *sample_statistics(samples[..., :k, :], *settings)
    for j in range(count):
        yield EACH, *sample_statistics(samples[..., j : j + 1, :], *settings)


def evaluate_case(
    case: dict,
    predictions: str | Path,
    regions: str = "wt",
    min_component_fraction: float = MIN_COMPONENT_FRACTION,
    variance_slice_sigma_mm: float = VARIANCE_SLICE_SIGMA_MM,
    segmentation_threshold: float = SEGMENTATION_THRESHOLD,
) -> list[dict]:
    """Rows of metrics for one case: per ensemble size, one per region."""
    volumes = load_case(case, predictions, regions)
    brain, layout = volumes["brain"], volumes["layout"]
    rows = []
    post = (min_component_fraction, variance_slice_sigma_mm, segmentation_threshold)
    for ensemble, seg, mean, variance, votes in ensembles(volumes, regions, *post):
        for c, region in enumerate(region_names(regions)):
            values = region_values(layout, region)
            pred, truth = np.isin(seg, values), np.isin(volumes["label"], values)
            row = {"case": volumes["case_id"], "region": region, "ensemble": ensemble}
            row.update(segmentation_metrics(pred, truth, volumes["spacing"]))
            row.update(uncertainty_metrics(variance[..., c], pred, truth, brain))
            row["ece"] = expected_calibration_error(mean[..., c][brain], truth[brain])
            row["case_uncertainty"] = expected_dice_gap(votes[..., c])
            rows.append(row)
    single = [r for r in rows if r["ensemble"] == EACH]
    averaged = (
        [_average([r for r in single if r["region"] == region]) for region in region_names(regions)]
        if single
        else []
    )
    return [r for r in rows if r["ensemble"] != EACH] + averaged


def _average(rows: list[dict]) -> dict:
    """One row of the metrics' means over rows of one case and region (nan where all are nan)."""
    labels = ("case", "region", "ensemble")
    out = {key: rows[0][key] for key in labels}
    for key in rows[0]:
        if key not in labels:
            out[key] = nan_mean([r[key] for r in rows])
    return out


def summarise(rows: list[dict], method: str) -> list[dict]:
    """Mean and std over cases per region and ensemble size (nan values left out)."""
    summary = []
    for region, ensemble in dict.fromkeys((r["region"], r["ensemble"]) for r in rows):
        group = [r for r in rows if (r["region"], r["ensemble"]) == (region, ensemble)]
        entry = {"method": method, "region": region, "ensemble": ensemble, "cases": len(group)}
        for key in (*METRICS, *UNCERTAINTY):
            values = np.array([r[key] for r in group], dtype=float)
            values = values[~np.isnan(values)]
            if len(values):
                entry[key], entry[f"{key}_std"] = float(values.mean()), float(values.std())
        # does the case score rank the cases by how well they are segmented?
        entry["spearman_uncertainty_dice"] = spearman(
            [r["case_uncertainty"] for r in group], [r["dice"] for r in group]
        )
        summary.append(entry)
    return summary


def _cell(entry: dict, key: str, digits: int = 3) -> str:
    if key not in entry:
        return "n/a"
    return f"{entry[key]:.{digits}f} ± {entry[key + '_std']:.{digits}f}"


def markdown(summary: list[dict]) -> str:
    """The paper's table (Dice, HD95, Jaccard; mean ± std over cases) with a region column,
    then the uncertainty quality: mean variance on wrong / right brain voxels, their
    correlation with the errors, ECE of the mean map, UEO and QU-BraTS score."""
    lines = [
        "| method | region | samples | cases | Dice | HD95 (mm) | Jaccard | var wrong / right "
        "| corr(var, error) | AUROC | errors with var | ECE | UEO | QU-BraTS | case score "
        "| Spearman(score, Dice) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        var = (
            f"{s['var_wrong']:.4f} / {s['var_right']:.5f}"
            if "var_wrong" in s and "var_right" in s
            else "n/a"
        )
        cells = [
            *(_cell(s, m) for m in METRICS),
            var,
            _cell(s, "var_error_corr"),
            _cell(s, "auroc"),
            _cell(s, "errors_with_variance"),
            _cell(s, "ece", 4),
            _cell(s, "ueo"),
            _cell(s, "qu_brats"),
            _cell(s, "case_uncertainty"),
            "n/a"
            if np.isnan(s["spearman_uncertainty_dice"])
            else f"{s['spearman_uncertainty_dice']:.2f}",
        ]
        lines.append(
            f"| {s['method']} | {s['region']} | {s['ensemble']} | {s['cases']} | "
            f"{' | '.join(cells)} |"
        )
    return "\n".join(lines) + "\n"


def evaluate(
    predictions: str | Sequence[str],
    dataset_dir: str,
    split: str = "testing",
    output: str = "eval",
    method: str | Sequence[str] = "diffusion ensemble",
    regions: str = "wt",
    num_folds: int = 5,
    fold: int = 0,
    test_fraction: float = 0.2,
    seed: int = 0,
    split_file: str | None = None,
    min_component_fraction: float = MIN_COMPONENT_FRACTION,
    variance_slice_sigma_mm: float = VARIANCE_SLICE_SIGMA_MM,
    segmentation_threshold: float | Sequence[float] = SEGMENTATION_THRESHOLD,
) -> list[dict]:
    """Score every labelled case of ``split`` (``training``/``validation``/``testing`` as the
    datalist splits ``dataset_dir``; ``all`` for the whole folder) in each prediction folder.

    The written segmentation is scored as it is; the ensembles of the saved samples are
    segmented as inference does, their mean above ``segmentation_threshold`` with
    ``min_component_fraction``, and their variance pooled over slices with
    ``variance_slice_sigma_mm`` (set them as the run did).

    ``predictions`` and ``method`` may be lists (one method name per folder) for one table of
    several methods, and ``segmentation_threshold`` too (one per folder: the U-Net's is 0.5).
    Writes ``cases.csv`` (one row per method, case, ensemble size and region) and ``summary.md``
    under ``output``, and returns the summary rows.
    """
    folders = [predictions] if isinstance(predictions, str | Path) else list(predictions)
    methods = [method] if isinstance(method, str) else list(method)
    if len(methods) != len(folders):
        raise OptionError(f"{len(folders)} prediction folder(s) but {len(methods)} method name(s)")
    thresholds = (
        list(segmentation_threshold)
        if isinstance(segmentation_threshold, Sequence)
        else [segmentation_threshold] * len(folders)
    )
    if len(thresholds) != len(folders):
        raise OptionError(
            f"{len(folders)} prediction folder(s) but {len(thresholds)} segmentation threshold(s)"
        )
    region_names(regions)  # fails early on an unknown setting
    cases = labelled_cases(
        dataset_dir, split, num_folds, fold, test_fraction, seed, split_file, folders
    )
    for folder in folders:
        for case in cases:
            check_case(case, folder, regions)
    rows, summary = [], []
    for folder, name, threshold in zip(folders, methods, thresholds, strict=True):
        post = (min_component_fraction, variance_slice_sigma_mm, threshold)
        method_rows = [
            {"method": name, **row}
            for case in cases
            for row in evaluate_case(case, folder, regions, *post)
        ]
        rows += method_rows
        summary += summarise(method_rows, name)
    out = Path(output)
    write_csv(out / "cases.csv", rows)
    write_text(out / "summary.md", markdown(summary))
    print(markdown(summary))
    return summary
