"""Which small parts of a segmentation to remove? (issue 15: HD95)

    python -m scripts.component_study --dataset_dir ../shared/data/brats18 \
        --split validation --split_file configs/brats18_split.json \
        --predictions outputs/validation [--output docs/components.md]

For each labelled case of ``split`` (its inference outputs in ``predictions``), the whole
tumour of the ensemble mean (> 0.5) is cleaned in each way and scored against the label (Dice,
HD95): ``fraction f`` keeps the connected parts with at least f times the largest part's voxels
(:func:`bundle.ensemble.outputs.keep_main_components`, what inference runs with
``min_component_fraction``; 0 keeps all, 1 only the largest), ``at least v ml`` keeps the parts
of v ml or more (the largest always), and ``fraction f, holes filled`` fills the holes left
after ``fraction f`` (``scipy.ndimage.binary_fill_holes``, as MONAI's ``FillHoles``) in 3-D or
in each axial slice. The means over the cases decide (docs/results.md, "Removing small parts").
With ``--thresholds "[0.3,0.4,0.5]"`` each clean-up is scored on the mean above each threshold
(docs/results.md, "The threshold of the mean"; default: the paper's 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from bundle.data.regions import region_channel, region_names
from bundle.ensemble.inferers import THRESHOLD
from bundle.ensemble.outputs import connected_parts, keep_main_components
from bundle.evaluation.metrics import segmentation_metrics
from bundle.evaluation.scoring import loaded_cases
from bundle.io.atomic import publish
from bundle.workflow.options import run_cli


def keep_large_parts(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    """The parts of ``mask`` (full connectivity) with at least ``min_voxels`` voxels, and the
    largest whatever its size."""
    parts, sizes = connected_parts(mask)
    keep = sizes >= min_voxels
    keep[sizes.argmax()] = True
    keep[0] = False
    return keep[parts]


def study(
    dataset_dir: str,
    predictions: str,
    split: str = "validation",
    split_file: str | None = None,
    regions: str = "wt",
    fractions: Sequence[float] = (0.0, 0.1, 0.2, 1.0),
    sizes_ml: Sequence[float] = (1.0, 5.0),
    fill_holes_after: Sequence[float] = (0.2,),
    thresholds: Sequence[float] = (THRESHOLD,),
    output: str | None = None,
) -> list[dict]:
    """Score every clean-up of the mean above each threshold on every case; print (and write to
    ``output``) a markdown table, and return its rows: per case and clean-up, Dice and HD95."""
    wt = region_channel(region_names(regions), "wt")
    rows = []
    for loaded in loaded_cases(dataset_dir, predictions, split, split_file, regions):
        truth = loaded["label"] > 0
        for threshold in thresholds:
            prefix = f"mean > {threshold:g}, " if len(thresholds) > 1 else ""
            for name, seg in clean_ups(
                loaded["mean"][..., wt] > threshold,
                loaded["spacing"],
                fractions,
                sizes_ml,
                fill_holes_after,
            ).items():
                metrics = segmentation_metrics(seg, truth, loaded["spacing"])
                rows.append({"clean_up": prefix + name, "case": loaded["case_id"], **metrics})
    publish(markdown(rows), output)
    return rows


def clean_ups(
    mask: np.ndarray,
    spacing: Sequence[float],
    fractions: Sequence[float],
    sizes_ml: Sequence[float],
    fill_holes_after: Sequence[float],
) -> dict[str, np.ndarray]:
    """Each clean-up of a segmentation by name (see the module's docstring)."""
    kept_by_fraction = {
        f: keep_main_components(torch.from_numpy(mask)[None], f)[0].numpy()
        for f in dict.fromkeys([*fractions, *fill_holes_after])
    }
    cleaned = {f"fraction {f:g}": kept_by_fraction[f] for f in fractions}
    voxel_ml = float(np.prod(spacing)) / 1000
    for v in sizes_ml:
        cleaned[f"at least {v:g} ml"] = keep_large_parts(mask, v / voxel_ml)
    for f in fill_holes_after:
        kept = kept_by_fraction[f]
        cleaned[f"fraction {f:g}, holes filled in 3-D"] = ndimage.binary_fill_holes(kept)
        by_slice = [ndimage.binary_fill_holes(kept[..., z]) for z in range(kept.shape[-1])]
        cleaned[f"fraction {f:g}, holes filled by slice"] = np.stack(by_slice, -1)
    return cleaned


def markdown(rows: list[dict]) -> str:
    """One line per clean-up: the mean Dice and HD95 over the cases, then each case's."""
    cases = list(dict.fromkeys(r["case"] for r in rows))
    lines = [
        "| clean-up | Dice (mean) | HD95 mm (mean) | "
        + " | ".join(f"{c} Dice / HD95" for c in cases)
        + " |",
        "|---|---|---|" + "---|" * len(cases),
    ]
    for name in dict.fromkeys(r["clean_up"] for r in rows):
        group = [r for r in rows if r["clean_up"] == name]
        cells = " | ".join(f"{r['dice']:.3f} / {r['hd95']:.1f}" for r in group)
        lines.append(
            f"| {name} | {np.mean([r['dice'] for r in group]):.4f} "
            f"| {np.mean([r['hd95'] for r in group]):.2f} | {cells} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_cli(study)
