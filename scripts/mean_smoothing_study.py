"""Does pooling the mean over neighbouring slices give a better 3-D segmentation? (issue 15)

    python -m scripts.mean_smoothing_study --dataset_dir ../shared/data/brats18 \
        --split validation --split_file configs/brats18_split.json \
        --predictions "['outputs/seed0','outputs/seed1']" [--sigmas "[1,2]" --output study.md]

The 2-D model samples every axial slice on its own, so its mean map is jagged from slice to
slice. For each predictions folder (one per trained network), each labelled case of ``split``
and each sigma (0: the written mean), the whole tumour's mean is smoothed by a Gaussian of sigma
mm along the slice axis (:func:`bundle.ensemble.outputs.smooth_across_slices`, as inference
pools the variance), segmented as inference does (above ``segmentation_threshold``, small parts
removed) and scored: Dice, HD95, the written variance's AUROC for that segmentation's errors on
the brain, and the ECE of the smoothed mean. The table gives every row, each sigma's mean over
all rows and each folder's mean Dice per sigma.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bundle.data.regions import region_channel, region_names, region_values
from bundle.ensemble.outputs import (
    MIN_COMPONENT_FRACTION,
    SEGMENTATION_THRESHOLD,
    segment,
    smooth_across_slices,
)
from bundle.evaluation.metrics import (
    error_auroc,
    expected_calibration_error,
    segmentation_metrics,
)
from bundle.evaluation.scoring import loaded_cases
from bundle.io.atomic import publish
from bundle.workflow.options import OptionError, run_cli

COLUMNS = ("dice", "hd95", "auroc", "ece")


def study(
    dataset_dir: str,
    predictions: str | Sequence[str],
    split: str = "validation",
    split_file: str | None = None,
    sigmas: Sequence[float] = (1.0, 2.0),
    segmentation_threshold: float = SEGMENTATION_THRESHOLD,
    min_component_fraction: float = MIN_COMPONENT_FRACTION,
    regions: str = "wt",
    output: str | None = None,
) -> list[dict]:
    """Score the written mean and its smoothed versions; print (and write to ``output``) a
    markdown table and return its rows, per folder, case and sigma."""
    if any(not isinstance(s, int | float) or s < 0 for s in sigmas):
        raise OptionError(f"--sigmas must be numbers >= 0 (mm), got {sigmas!r}")
    folders = [predictions] if isinstance(predictions, str) else list(predictions)
    wt = region_channel(region_names(regions), "wt")
    rows = []
    for folder in folders:
        for case in loaded_cases(dataset_dir, folder, split, split_file, regions):
            truth = np.isin(case["label"], region_values(case["layout"], "wt"))
            brain, variance = case["brain"], case["variance"][..., wt]
            for sigma in (0.0, *sigmas):
                mean = smooth_across_slices(case["mean"][..., wt], case["affine"], sigma)
                seg = (
                    segment(
                        torch.from_numpy(mean[None]), min_component_fraction, segmentation_threshold
                    )[0].numpy()
                    > 0
                )
                rows.append(
                    {
                        "folder": folder,
                        "case": case["case_id"],
                        "sigma": sigma,
                        **segmentation_metrics(seg, truth, case["spacing"]),
                        "auroc": error_auroc(variance[brain], (seg != truth)[brain]),
                        "ece": expected_calibration_error(mean[brain], truth[brain]),
                    }
                )
    publish(markdown(rows), output)
    return rows


def markdown(rows: list[dict]) -> str:
    """Every row, then each sigma's means over all rows and each folder's mean Dice."""
    sigmas = list(dict.fromkeys(r["sigma"] for r in rows))
    folders = list(dict.fromkeys(r["folder"] for r in rows))
    lines = [
        "| folder | case | sigma (mm) | Dice | HD95 (mm) | AUROC | ECE |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['folder']} | {r['case']} | {r['sigma']:g} | "
            + " | ".join(f"{r[k]:.4f}" for k in COLUMNS)
            + " |"
            for r in rows
        ),
        "",
        "| sigma (mm) | Dice | HD95 (mm) | AUROC | ECE | "
        + " | ".join(f"Dice of {f}" for f in folders)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(folders),
    ]
    for sigma in sigmas:
        group = [r for r in rows if r["sigma"] == sigma]
        means = [float(np.nanmean([r[k] for r in group])) for k in COLUMNS]
        per_folder = [np.mean([r["dice"] for r in group if r["folder"] == f]) for f in folders]
        lines.append(
            f"| {sigma:g} | " + " | ".join(f"{v:.4f}" for v in [*means, *per_folder]) + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_cli(study)
