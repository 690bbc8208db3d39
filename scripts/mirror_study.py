"""Do left-right mirrored inputs make a better implicit ensemble? (issue 16, "anything else")

    python -m scripts.mirror_study --dataset_dir ../shared/data/brats18 \
        --output docs/uncertainty/mirror/study.md

Training flips slices left-right half of the time, so the model should segment a mirrored brain
as well as the brain itself. For every ``slice_stride``-th brain slice of the cases of ``sides``
(as :mod:`scripts.uncertainty_study` picks them), this draws ``num_samples`` masks of the slice
(seed 0) and ``num_samples`` of the mirrored slice (seed 1), mirrors the latter back, and scores
with the study's scorer, per side: the plain ensemble, the mirrored one, and mixes of both
(the first ``mixed`` plain samples with mirrored ones up to ``num_samples``; all of both).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bundle.io.atomic import publish, write_csv
from bundle.workflow.configs import BUNDLE_ROOT
from bundle.workflow.options import OptionError, run_cli
from scripts.uncertainty_study import (
    draw,
    held_out_slices,
    load_model,
    model_slices,
    score,
    stored_context,
    summarise,
)

MIRROR_AXIS = -2
"""Left-right in the study's (S, 4, H, W) slices: H is the volume's first axis, the one
training's RandFlipd mirrors (``spatial_axis: 0``)."""


def mixes(plain: np.ndarray, mirrored: np.ndarray, mixed: int) -> dict[str, np.ndarray]:
    """The ensembles compared, from N plain and N mirrored-back samples (N, S, C, H, W)."""
    n = len(plain)
    return {
        "plain": plain,
        "mirrored": mirrored,
        f"{mixed} plain + {n - mixed} mirrored": np.concatenate(
            [plain[:mixed], mirrored[: n - mixed]]
        ),
        f"{n} plain + {n} mirrored": np.concatenate([plain, mirrored]),
    }


def mirror_study(
    dataset_dir: str,
    ckpt_path: str = str(BUNDLE_ROOT / "models" / "model.pt"),
    output: str = "docs/uncertainty/mirror/study.md",
    split_file: str | None = str(BUNDLE_ROOT / "configs" / "brats18_split.json"),
    sides: Sequence[str] = ("validation", "testing"),
    slice_stride: int = 16,
    steps: Sequence[int] = (3, 5),
    eta: float = 1.0,
    num_samples: int = 5,
    mixed: int = 3,
    overrides: dict | None = None,
) -> list[dict]:
    """Run the comparison; writes a markdown table to ``output`` (its per-case rows beside it, as
    CSV) and returns the table's rows."""
    if not 0 < mixed < num_samples:
        raise OptionError(f"--mixed must be between 1 and num_samples - 1, got {mixed}")
    cases = held_out_slices(dataset_dir, split_file, sides, slice_stride, overrides)
    network, scheduler = load_model(ckpt_path, overrides)
    context = stored_context(ckpt_path)
    rows = []
    for k in steps:
        for case in cases:
            image = model_slices(case, context)
            plain = draw(network, scheduler, image, "ddim", k, eta, num_samples, 0)
            mirrored = draw(
                network, scheduler, image.flip(MIRROR_AXIS), "ddim", k, eta, num_samples, 1
            )
            mirrored = np.flip(mirrored, MIRROR_AXIS)
            for name, samples in mixes(plain, mirrored, mixed).items():
                rows.append(
                    {
                        "side": case["side"],
                        "case": case["case_id"],
                        "model": name,
                        "sampler": "ddim",
                        "steps": k,
                        "eta": eta,
                        "samples": "soft",
                        "k": len(samples),
                        "seconds": float("nan"),
                        **score(samples, case["label"], case["brain"]),
                    }
                )
    lines = [
        "| side | steps | ensemble | samples | Dice | 1-sample Dice (mean) | gain | AUROC "
        "| errors with var | ECE | case score | Spearman |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary = summarise(rows)
    for s in summary:
        lines.append(
            f"| {s['side']} | {s['steps']} | {s['model']} | {s['k']} | {s['dice']:.3f} "
            f"| {s['single_dice']:.3f} | {s['dice'] - s['single_dice']:+.3f} | {s['auroc']:.3f} "
            f"| {s['errors_with_variance']:.3f} | {s['ece']:.4f} | {s['case_uncertainty']:.3f} "
            f"| {s['spearman']:.2f} |"
        )
    write_csv(Path(output).with_suffix(".csv"), rows)
    publish("\n".join(lines) + "\n", output)
    return summary


if __name__ == "__main__":
    run_cli(mirror_study)
