"""Hand-made inference outputs, named and shaped as inference writes them, for evaluation tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from bundle.io.outputs import output_path


def write_predictions(
    folder: Path,
    case: dict,
    seg: np.ndarray,
    mean: np.ndarray,
    variance: np.ndarray,
    samples: np.ndarray | None = None,
) -> None:
    """One case's segmentation, mean, variance, votes (the samples' votes, or the mean when there
    are no samples: the hand-made means are votes) and samples NIfTI in the label's grid."""
    affine = nib.load(case["label"]).affine
    folder.mkdir(parents=True, exist_ok=True)
    votes = mean if samples is None else (samples > 0.5).mean(-1)
    outputs = {"pred": seg.astype(np.uint8), "mean": mean, "variance": variance, "votes": votes}
    if samples is not None:
        outputs["samples"] = samples
    for key, data in outputs.items():
        array = data if key == "pred" else data.astype(np.float32)
        nib.save(nib.Nifti1Image(array, affine), str(output_path(folder, case["case_id"], key)))
