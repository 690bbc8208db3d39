"""Does pooling the variance over neighbouring slices mark the errors better? (issue 16)

    python -m scripts.variance_smoothing_study --dataset_dir ../shared/data/brats18 \
        --split validation --split_file configs/brats18_split.json \
        --predictions outputs/validation [--sigmas "[1,1.5,2,3]" --output study.md]

The 2-D model samples every axial slice on its own, so a voxel's variance is the spread of the
N samples of its own slice: a noisy estimate at N = 5, and nothing ties it to the slices above
and below, although the errors run across them. A Gaussian along the slice axis (``sigma`` in
mm; the axis of the case's grid closest to the world's inferior-superior axis) pools the
neighbouring slices' variance into each voxel (inference does it with
``variance_slice_sigma_mm``). For each sigma (0: the written map) and each labelled case of
``split`` (its inference outputs in ``predictions``, written with ``--variance_slice_sigma_mm 0``
to study each slice's own variance): the whole tumour's uncertainty metrics on the brain against
the errors of the written segmentation (:func:`bundle.evaluation.metrics.uncertainty_metrics`),
and their means over the cases.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bundle.data.regions import region_channel, region_names, region_values
from bundle.ensemble.outputs import smooth_across_slices
from bundle.evaluation.metrics import uncertainty_metrics
from bundle.evaluation.scoring import loaded_cases
from bundle.io.atomic import publish
from bundle.workflow.options import OptionError, run_cli

COLUMNS = ("auroc", "errors_with_variance", "ueo", "var_ratio", "qu_brats")


def study(
    dataset_dir: str,
    predictions: str,
    split: str = "validation",
    split_file: str | None = None,
    sigmas: Sequence[float] = (1.0, 1.5, 2.0, 3.0),
    regions: str = "wt",
    output: str | None = None,
) -> list[dict]:
    """Score the written variance and its smoothed versions; print (and write to ``output``) a
    markdown table and return its rows, per sigma and case."""
    if any(not isinstance(s, int | float) or s < 0 for s in sigmas):
        raise OptionError(f"--sigmas must be numbers >= 0 (mm), got {sigmas!r}")
    wt = region_channel(region_names(regions), "wt")
    rows = []
    for case in loaded_cases(dataset_dir, predictions, split, split_file, regions):
        values = region_values(case["layout"], "wt")
        pred, truth = np.isin(case["seg"], values), np.isin(case["label"], values)
        variance = case["variance"][..., wt].astype(np.float32)
        for sigma in (0.0, *sigmas):
            smoothed = smooth_across_slices(variance, case["affine"], sigma)
            metrics = uncertainty_metrics(smoothed, pred, truth, case["brain"])
            rows.append({"sigma": sigma, "case": case["case_id"], **metrics})
    publish(markdown(rows), output)
    return rows


def markdown(rows: list[dict]) -> str:
    """One line per sigma and case, then each sigma's means over the cases."""
    sigmas = list(dict.fromkeys(r["sigma"] for r in rows))
    means = [
        {
            "sigma": sigma,
            "case": "**mean**",
            **{k: float(np.nanmean([r[k] for r in rows if r["sigma"] == sigma])) for k in COLUMNS},
        }
        for sigma in sigmas
    ]
    # a stable sort: each sigma's cases in their order, then its mean
    ordered = sorted([*rows, *means], key=lambda r: sigmas.index(r["sigma"]))
    lines = [
        "| sigma (mm) | case | AUROC | errors with var | UEO | var wrong / right | QU-BraTS |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['sigma']:g} | {r['case']} | " + " | ".join(f"{r[k]:.3f}" for k in COLUMNS) + " |"
            for r in ordered
        ),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_cli(study)
