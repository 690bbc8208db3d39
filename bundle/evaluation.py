"""Volume metrics of the paper's table (Dice, HD95, Jaccard) and of the uncertainty map.

Conventions for empty masks (BraTS's): both empty -> Dice = Jaccard = 1, HD95 = 0; exactly one
empty -> Dice = Jaccard = 0 and HD95 = the diagonal of the volume in mm (the largest distance
possible in it, 373.13 mm for BraTS's 240 x 240 x 155 grid).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance


def overlap(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and Jaccard of two binary volumes."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    intersection = np.logical_and(pred, truth).sum()
    total = pred.sum() + truth.sum()
    if total == 0:
        return 1.0, 1.0
    return float(2 * intersection / total), float(intersection / (total - intersection))


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


def uncertainty_metrics(
    variance: np.ndarray, pred: np.ndarray, truth: np.ndarray, brain: np.ndarray
) -> dict[str, float]:
    """Does high variance mark the wrong voxels? Mean variance on the voxels of the brain that
    the segmentation gets wrong and on those it gets right, and their ratio (> 1: it does)."""
    wrong = (pred.astype(bool) != truth.astype(bool)) & brain
    right = ~wrong & brain
    var_wrong = float(variance[wrong].mean()) if wrong.any() else float("nan")
    var_right = float(variance[right].mean()) if right.any() else float("nan")
    ratio = var_wrong / var_right if var_right > 0 else float("nan")
    return {"var_wrong": var_wrong, "var_right": var_right, "var_ratio": ratio}
