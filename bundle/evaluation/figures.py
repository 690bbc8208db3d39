"""Figures of the results from measured data, as PNG (every figure says: synthetic data).

``ensemble``: Dice against ensemble size, from the ``cases.csv`` of
:func:`bundle.evaluation.scoring.evaluate` (runs saved with their samples; a method without
samples is a horizontal line). ``steps``: Dice and the variance ratio (wrong / right pixels)
against sampling steps, from the sweep's table (``scripts/sweep.py``), so that few steps can be
seen not to destroy the uncertainty. ``reliability``: the reliability diagram of the mean maps of
prediction folders, pooled over the brain voxels of the cases. ``scripts/figures.py`` is the
command line.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from bundle.data.regions import region_names, region_values  # noqa: E402
from bundle.evaluation.metrics import binned_calibration_error, reliability_bins  # noqa: E402
from bundle.evaluation.scoring import labelled_cases, load_case  # noqa: E402

SYNTHETIC = "synthetic data"


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def ensemble(
    cases_csv: str,
    output: str = "docs/dice_vs_ensemble.png",
    metric: str = "dice",
    data: str = "held-out cases",
) -> Path:
    """Mean over cases of ``metric`` against ensemble size, per method and region; ``data``
    names the cases in the title."""
    rows = list(csv.DictReader(open(cases_csv)))
    fig, ax = plt.subplots(figsize=(6, 4))
    curves = dict.fromkeys((r["method"], r["region"]) for r in rows)
    for index, (method, region) in enumerate(curves):
        group = [r for r in rows if (r["method"], r["region"]) == (method, region)]
        sizes = sorted({int(r["ensemble"]) for r in group if r["ensemble"].isdigit()})
        style = {"label": f"{method} ({region})", "color": f"C{index}"}
        if sizes:
            means = [
                np.mean([float(r[metric]) for r in group if r["ensemble"] == str(k)]) for k in sizes
            ]
            ax.plot(sizes, means, "o-", **style)
        else:
            ax.axhline(np.mean([float(r[metric]) for r in group]), ls="--", **style)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("ensemble size (samples)")
    ax.set_ylabel(f"mean {metric} over cases")
    ax.set_title(f"{metric} against ensemble size ({data})")
    ax.legend(fontsize=8)
    return _save(fig, output)


def plot_steps(
    results: dict, samplers: Sequence[str], steps: Sequence[int], path: str | Path
) -> Path:
    """Dice and variance ratio against sampling steps, DDPM's 1000 steps as the reference;
    ``results`` maps (sampler, steps) to (Dice, variance ratio)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for index, title in enumerate(("ensemble Dice", "variance ratio, wrong / right pixels")):
        for name in samplers:
            axes[index].plot(steps, [results[name, k][index] for k in steps], "o-", label=name)
        axes[index].axhline(results["ddpm", 1000][index], color="k", ls="--", label="ddpm 1000")
        axes[index].set_xscale("log")
        axes[index].set_xlabel("sampling steps")
        axes[index].set_title(f"{title} ({SYNTHETIC})")
        axes[index].legend()
    return _save(fig, path)


def steps(
    sweep: str = "docs/performance_sweep.md", output: str = "docs/performance_sweep.png"
) -> Path:
    """The sweep's sampler table (``| sampler | steps | Dice | ratio | seconds |``) as a figure."""
    row = re.compile(r"^\|\s*(\w+)\s*\|\s*(\d+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+|nan)\s*\|")
    results = {}
    for line in Path(sweep).read_text().splitlines():
        if match := row.match(line):
            name, k, dice, ratio = match.groups()
            results[name, int(k)] = (float(dice), float(ratio))
    if ("ddpm", 1000) not in results:
        raise ValueError(f"{sweep}: no 'ddpm | 1000' row in a sampler table")
    samplers = list(dict.fromkeys(name for name, _ in results if name != "ddpm"))
    counts = sorted({k for name, k in results if name != "ddpm"})
    return plot_steps(results, samplers, counts, output)


def reliability(
    predictions: str | Sequence[str],
    dataset_dir: str,
    method: str | Sequence[str] = "diffusion ensemble",
    split: str = "testing",
    output: str = "docs/reliability.png",
    regions: str = "wt",
    bins: int = 15,
    num_folds: int = 5,
    fold: int = 0,
    test_fraction: float = 0.2,
    seed: int = 0,
    split_file: str | None = None,
    data: str = "held-out cases",
) -> Path:
    """Fraction of tumour voxels against the mean map's probability, per bin, pooled over the
    brain voxels of every labelled case of ``split``; one curve per folder and region; ``data``
    names the cases in the titles."""
    folders = [predictions] if isinstance(predictions, str) else list(predictions)
    methods = [method] if isinstance(method, str) else list(method)
    cases = labelled_cases(
        dataset_dir, split, num_folds, fold, test_fraction, seed, split_file, exclude=folders
    )
    fig, (curve, counts) = plt.subplots(1, 2, figsize=(10, 4))
    centres = (np.arange(bins) + 0.5) / bins
    for folder, name in zip(folders, methods, strict=True):
        pooled = np.zeros((len(region_names(regions)), 3, bins))
        for case in cases:
            volumes = load_case(case, folder, regions, with_samples=False)
            brain = volumes["brain"]
            for c, region in enumerate(region_names(regions)):
                truth = np.isin(volumes["label"], region_values(volumes["layout"], region))
                pooled[c] += reliability_bins(volumes["mean"][..., c][brain], truth[brain], bins)
        for c, region in enumerate(region_names(regions)):
            count, prob_sum, truth_sum = pooled[c]
            used = count > 0
            ece = binned_calibration_error(count, prob_sum, truth_sum)
            label = f"{name} ({region}), pooled ECE {ece:.4f}"
            curve.plot(
                prob_sum[used] / count[used], truth_sum[used] / count[used], "o-", label=label
            )
            counts.step(centres, count, where="mid", label=label)
    curve.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    curve.set_xlabel("mean probability in bin")
    curve.set_ylabel("fraction of tumour voxels")
    curve.set_title(f"reliability of the mean map ({data})")
    curve.legend(fontsize=7)
    counts.set_yscale("log")
    counts.set_xlabel("probability bin")
    counts.set_ylabel("brain voxels")
    counts.set_title(f"voxels per bin, {len(cases)} cases ({data})")
    return _save(fig, output)
