"""Would removing each sample's stray parts before the mean calibrate it? (issue 16: ECE)

    python -m scripts.sample_cleanup_study --dataset_dir ../shared/data/brats18 \
        --split validation --split_file configs/brats18_split.json \
        --predictions outputs/validation --output eval/sample_cleanup [--taus "[0.5,0.25,0.1]"]

The whole-tumour run in ``predictions`` must have saved its samples (``--save_samples true``).
In each sample (in 3-D), the parts of (sample > 0.5) with at least ``min_component_fraction`` of
its largest part's voxels are its core; for each tau, the parts of (sample > tau) that hold no
core voxel are set to 0 (values at or below tau stay). The maps of the cleaned samples are
recomputed as inference does (mean, variance pooled over slices, votes, segmentation) and
written as one predictions folder per tau under ``output``, with ``none`` (the samples as
saved, recomputed alike); all are scored in one table by
:func:`bundle.evaluation.scoring.evaluate` (``output``/summary.md, cases.csv).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from bundle.data.layouts import DatasetError
from bundle.ensemble.inferers import THRESHOLD
from bundle.ensemble.outputs import (
    MIN_COMPONENT_FRACTION,
    SEGMENTATION_THRESHOLD,
    VARIANCE_SLICE_SIGMA_MM,
    connected_parts,
)
from bundle.evaluation.scoring import evaluate, labelled_cases, load_case, sample_statistics
from bundle.io.atomic import atomic_path
from bundle.io.outputs import output_path
from bundle.workflow.options import run_cli


def clean_sample(sample: np.ndarray, tau: float, min_fraction: float) -> np.ndarray:
    """``sample`` with the parts of (sample > tau) that hold none of its core (the parts of
    (sample > 0.5) with at least ``min_fraction`` of the largest one's voxels) set to 0."""
    parts, sizes = connected_parts(sample > THRESHOLD)
    if not sizes.any():
        return sample
    core = sizes >= min_fraction * sizes.max()
    core[0] = False
    low, _ = connected_parts(sample > tau)
    touched = np.unique(low[core[parts]])
    return np.where(np.isin(low, touched[touched > 0]) | (low == 0), sample, 0)


def study(
    dataset_dir: str,
    predictions: str,
    output: str,
    split: str = "validation",
    split_file: str | None = None,
    taus: Sequence[float] = (0.5, 0.25, 0.1),
    min_component_fraction: float = MIN_COMPONENT_FRACTION,
    variance_slice_sigma_mm: float = VARIANCE_SLICE_SIGMA_MM,
    segmentation_threshold: float = SEGMENTATION_THRESHOLD,
) -> list[dict]:
    """Write the cleaned predictions folders and return the evaluation's summary rows."""
    names = {"none": None} | {f"tau {tau:g}": tau for tau in taus}
    post = (min_component_fraction, variance_slice_sigma_mm, segmentation_threshold)
    for case in labelled_cases(dataset_dir, split, split_file=split_file):
        volumes = load_case(case, predictions)
        if volumes["samples"] is None:
            raise DatasetError(
                f"case {case['case_id']}: {predictions} has no saved samples "
                "(run inference with --save_samples true)"
            )
        saved = volumes["samples"][..., 0]  # X, Y, Z, N of the whole tumour
        for name, tau in names.items():
            samples = (
                saved
                if tau is None
                else np.stack(
                    [
                        clean_sample(s, tau, min_component_fraction)
                        for s in np.moveaxis(saved, -1, 0)
                    ],
                    -1,
                )
            )
            seg, mean, variance, votes = sample_statistics(samples[..., None], volumes, "wt", *post)
            maps = {"mean": mean[..., 0], "variance": variance[..., 0], "votes": votes[..., 0]}
            maps |= {"pred": seg, "samples": samples}
            _write(Path(output) / name, case["case_id"], volumes["affine"], maps)
    folders = [str(Path(output) / name) for name in names]
    return evaluate(
        folders,
        dataset_dir,
        split,
        output,
        list(names),
        split_file=split_file,
        min_component_fraction=min_component_fraction,
        variance_slice_sigma_mm=variance_slice_sigma_mm,
        segmentation_threshold=segmentation_threshold,
    )


def _write(folder: Path, case_id: str, affine: np.ndarray, maps: dict) -> None:
    """One case's maps as inference names them, each file whole or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, data in maps.items():
        array = data.astype(np.uint8 if key == "pred" else np.float32)
        with atomic_path(output_path(folder, case_id, key)) as path:
            nib.save(nib.Nifti1Image(array, affine), str(path))


if __name__ == "__main__":
    run_cli(study)
