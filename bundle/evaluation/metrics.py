"""Volume metrics of the paper's table (Dice, HD95, Jaccard) and of the uncertainty map.

Conventions for empty masks (BraTS's): both empty -> Dice = Jaccard = 1, HD95 = 0; exactly one
empty -> Dice = Jaccard = 0 and HD95 = the diagonal of the volume in mm (the largest distance
possible in it, 373.13 mm for BraTS's 240 x 240 x 155 grid).

HD95 is the larger of the two directed 95th percentiles of the surface distances (MONAI's, as the
DeepMind surface-distance library); medpy's ``hd95`` takes the 95th percentile of both
directions pooled, which is never larger (tests/test_metrics_crosscheck.py measures the gap).

The uncertainty metrics take the variance of an ensemble of [0, 1] masks (at most 0.25) and are
computed on the brain's voxels, where the errors can be.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

from bundle.ensemble.inferers import THRESHOLD


def nan_mean(values: Sequence[float]) -> float:
    """The mean of the values that are not NaN (a metric undefined for some cases or samples,
    such as HD95 of an empty mask); NaN when none is."""
    array = np.asarray(values, dtype=float)
    return float(np.nanmean(array)) if (~np.isnan(array)).any() else float("nan")


def overlap(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and Jaccard of two binary volumes."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    intersection = np.logical_and(pred, truth).sum()
    total = pred.sum() + truth.sum()
    if total == 0:
        return 1.0, 1.0
    return float(2 * intersection / total), float(intersection / (total - intersection))


def expected_dice_gap(votes: np.ndarray, threshold: float = THRESHOLD) -> float:
    """A case's uncertainty: 1 minus the Dice that a sample of the ensemble is expected to have
    against the samples' majority (votes > ``threshold``).

    ``votes`` is each voxel's fraction of samples that call it tumour (each sample thresholded
    at 0.5), so a sample's overlap with the majority S and its size are, in expectation, the
    sums of the votes over S and over the volume: the gap is 1 - 2 sum_S(votes) / (|S| +
    sum(votes)). It is 0 when all samples agree (one sample: always) and grows as they disagree
    relative to the tumour's size (0 with no tumour and no doubt). Votes, not the mean of soft
    samples, whose low values over the whole brain would count as partial votes and make the
    score grow with the brain's size; and votes brought back to the input's grid by nearest
    neighbour, since interpolated ones would add a term that grows with the tumour's surface
    (docs/uncertainty.md, "Case triage").
    """
    seg = votes > threshold
    denominator = float(seg.sum() + votes.sum())
    if denominator == 0:
        return 0.0
    return 1.0 - 2.0 * float(votes[seg].sum()) / denominator


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm, with the voxel spacing respected."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return float(np.linalg.norm(np.array(pred.shape) * np.array(spacing)))
    distance = compute_hausdorff_distance(
        torch.from_numpy(pred)[None, None],
        torch.from_numpy(truth)[None, None],
        percentile=95,
        spacing=list(spacing),
    )
    return float(distance.item())


def segmentation_metrics(
    pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]
) -> dict[str, float]:
    """The paper's three numbers for one case."""
    dice, jaccard = overlap(pred, truth)
    return {"dice": dice, "hd95": hd95(pred, truth, spacing), "jaccard": jaccard}


MAX_VARIANCE = 0.25
"""The largest variance of values in [0, 1] (half zeros, half ones): normalises the uncertainty."""

QU_BRATS_POINTS = 40
"""Threshold steps of the QU-BraTS score, as the challenge's evaluation code (100 / 40 = 2.5)."""


def variance_on_errors(
    variance: Any, seg: Any, label: Any, brain: Any = None
) -> tuple[float, int, float, int]:
    """Sum of variance over wrongly and rightly segmented voxels (of the brain, if given), and
    their counts.

    Returned as sums so that callers can pool over images before dividing (the training
    validation's ``VarianceErrorRatio``). Works on NumPy arrays and torch tensors alike.
    """
    wrong = (seg > 0) != (label > 0)
    right = ~wrong
    if brain is not None:
        wrong, right = wrong & brain, right & brain
    return (
        float(variance[wrong].sum()),
        int(wrong.sum()),
        float(variance[right].sum()),
        int(right.sum()),
    )


def variance_error_correlation(variance: np.ndarray, error: np.ndarray) -> float:
    """Pearson correlation of the variance with the binary error map (the point-biserial
    correlation): > 0 when errors carry more variance; nan when either map is constant."""
    variance, error = variance.astype(np.float64).ravel(), error.astype(np.float64).ravel()
    if variance.std() == 0 or error.std() == 0:
        return float("nan")
    return float(np.corrcoef(variance, error)[0, 1])


def reliability_bins(
    prob: np.ndarray, truth: np.ndarray, bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of the foreground probability: voxel count, summed probability and
    summed truth; sums (not means) so that cases can be pooled for a reliability diagram."""
    prob = prob.astype(np.float64).ravel()
    index = np.minimum((prob * bins).astype(np.int64), bins - 1)
    count = np.bincount(index, minlength=bins)
    prob_sum = np.bincount(index, weights=prob, minlength=bins)
    truth_sum = np.bincount(index, weights=truth.ravel().astype(np.float64), minlength=bins)
    return count, prob_sum, truth_sum


def binned_calibration_error(
    count: np.ndarray, prob_sum: np.ndarray, truth_sum: np.ndarray
) -> float:
    """ECE from :func:`reliability_bins` (of one case, or pooled over cases)."""
    return float(np.abs(prob_sum - truth_sum).sum() / max(count.sum(), 1))


def expected_calibration_error(prob: np.ndarray, truth: np.ndarray, bins: int = 15) -> float:
    """ECE of a foreground-probability map (Guo et al. 2017; binary form of Jungo and Reyes
    2019): over equal-width bins, the voxel-weighted gap between the mean probability and the
    fraction of tumour voxels. 0 for a calibrated map."""
    return binned_calibration_error(*reliability_bins(prob, truth, bins))


def uncertainty_error_overlap(uncertainty: np.ndarray, error: np.ndarray) -> float:
    """UEO (Jungo and Reyes 2019): Dice between ``uncertainty > t`` and the error map, maximised
    over every threshold t >= 0 (exactly, over the map's distinct values: no threshold grid).
    1 when the uncertainty singles out the errors; 0 for a map without uncertainty."""
    uncertainty, error = uncertainty.ravel(), error.ravel().astype(bool)
    n_error = int(error.sum())
    order = np.argsort(-uncertainty, kind="stable")
    ranked = uncertainty[order]
    hits = np.cumsum(error[order])
    # flagging the k most uncertain voxels is a threshold when the k-th is above the (k+1)-th
    # and above 0
    flagged = np.flatnonzero((ranked > np.append(ranked[1:], 0.0)) & (ranked > 0)) + 1
    best = 1.0 if n_error == 0 else 0.0  # a threshold above the maximum flags nothing
    if len(flagged):
        best = max(best, float((2 * hits[flagged - 1] / (flagged + n_error)).max()))
    return best


def qu_brats_score(
    uncertainty: np.ndarray,
    pred: np.ndarray,
    truth: np.ndarray,
    brain: np.ndarray,
    points: int = QU_BRATS_POINTS,
) -> dict[str, float]:
    """The QU-BraTS score (Mehta et al. 2022) of an uncertainty in [0, 1].

    At each threshold t from 1 down to 0, voxels with uncertainty > t are filtered out; the
    Dice of the remaining voxels should rise, while few true positives and true negatives (of
    the brain) should be filtered. The score averages the area under the Dice curve and one
    minus the areas under the filtered-TP and filtered-TN ratios: it rewards an uncertainty
    that is high on the errors and low elsewhere. A map without uncertainty scores
    (Dice + 2) / 3.
    """
    pred, truth, brain = pred.astype(bool), truth.astype(bool), brain.astype(bool)
    thresholds = np.linspace(0.0, 1.0, points + 1)

    def kept(mask: np.ndarray) -> np.ndarray:
        """How many voxels of ``mask`` survive each threshold (uncertainty <= t)."""
        return np.searchsorted(np.sort(uncertainty[mask]), thresholds, side="right")

    tp, fp, fn = kept(pred & truth), kept(pred & ~truth), kept(~pred & truth)
    tp_brain, tn_brain = kept(pred & truth & brain), kept(~pred & ~truth & brain)
    total = 2 * tp + fp + fn
    dice = np.where(total > 0, 2 * tp / np.maximum(total, 1), 1.0)
    ftp = 1 - tp_brain / tp_brain[-1] if tp_brain[-1] else np.zeros_like(thresholds)
    ftn = 1 - tn_brain / tn_brain[-1] if tn_brain[-1] else np.zeros_like(thresholds)
    auc = {
        name: float(np.trapezoid(v, thresholds))
        for name, v in (("dice", dice), ("ftp", ftp), ("ftn", ftn))
    }
    return {
        "qu_brats": (auc["dice"] + (1 - auc["ftp"]) + (1 - auc["ftn"])) / 3,
        "qu_dice_auc": auc["dice"],
        "qu_ftp_auc": auc["ftp"],
        "qu_ftn_auc": auc["ftn"],
    }


VARIANCE_FLOOR = 1e-3
"""A voxel "has variance" above this (a standard deviation of about 0.03 between samples): the
fraction of wrong voxels that have it says how many errors the map shows at all."""


def error_auroc(uncertainty: np.ndarray, error: np.ndarray) -> float:
    """Area under the ROC curve of an uncertainty map as a detector of the wrong voxels: the
    chance that a wrong voxel is more uncertain than a right one, ties counting half (the
    Mann-Whitney statistic). 0.5 is chance; nan when there are no wrong or no right voxels."""
    uncertainty, error = uncertainty.ravel(), error.ravel().astype(bool)
    n_wrong = int(error.sum())
    n_right = error.size - n_wrong
    if n_wrong == 0 or n_right == 0:
        return float("nan")
    _, index = np.unique(uncertainty, return_inverse=True)
    wrong = np.bincount(index.ravel(), weights=error).astype(np.float64)
    right = np.bincount(index.ravel()).astype(np.float64) - wrong
    right_below = np.cumsum(right) - right
    return float((wrong * (right_below + 0.5 * right)).sum() / (n_wrong * n_right))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get their average rank); nan for fewer than 3 pairs
    or a constant series."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if len(x) < 3:
        return float("nan")
    rx, ry = _average_ranks(x), _average_ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _average_ranks(values: np.ndarray) -> np.ndarray:
    _, index, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts
    return (first + (counts - 1) / 2.0)[index]


def uncertainty_metrics(
    variance: np.ndarray, pred: np.ndarray, truth: np.ndarray, brain: np.ndarray
) -> dict[str, float]:
    """Does high variance mark the wrong voxels? On the brain's voxels: the mean variance on
    the voxels the segmentation gets wrong and on those it gets right and their ratio (> 1:
    it does), the variance-error correlation, the AUROC of the variance for "this voxel is
    wrong", the fraction of wrong voxels with variance (above :data:`VARIANCE_FLOOR`), the UEO
    and the QU-BraTS score."""
    brain = brain.astype(bool)
    wrong_sum, n_wrong, right_sum, n_right = variance_on_errors(variance, pred, truth, brain)
    var_wrong = wrong_sum / n_wrong if n_wrong else float("nan")
    var_right = right_sum / n_right if n_right else float("nan")
    ratio = var_wrong / var_right if var_right > 0 else float("nan")
    error = (pred > 0) != (truth > 0)
    uncertainty = np.clip(variance / MAX_VARIANCE, 0.0, 1.0)
    return {
        "var_wrong": var_wrong,
        "var_right": var_right,
        "var_ratio": ratio,
        "var_error_corr": variance_error_correlation(variance[brain], error[brain]),
        "auroc": error_auroc(variance[brain], error[brain]),
        "errors_with_variance": (
            float((variance[error & brain] > VARIANCE_FLOOR).mean())
            if (error & brain).any()
            else float("nan")
        ),
        "ueo": uncertainty_error_overlap(uncertainty[brain], error[brain]),
        **qu_brats_score(uncertainty, pred, truth, brain),
    }
