"""Dice and uncertainty against sampler and steps, and inference cost against ensemble size and
slices, measured in one run with the shipped weights.

    python -m scripts.sweep --output docs/performance_sweep.md \
        --case_dirs "['data/demo/BraTS20_Training_005','data/demo/BraTS20_Training_027']"

Part 1 samples ``num_samples`` masks of ``slices_per_case`` tumour slices of each case (network
grid) with DDPM (1000 steps, the paper's) and with DDIM / DPM-Solver++ at each step count, and
reports the ensemble Dice (pooled over the slices), the variance ratio (mean variance on wrong
over right brain pixels) and seconds. Part 2 times whole-volume inference of the first case for
ensemble sizes and slice counts, with least-squares slopes.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose

from bundle.data.layouts import find_cases
from bundle.data.regions import region_channel
from bundle.data.transforms import tumour_slice_indices
from bundle.diffusion.samplers import make_sampler
from bundle.ensemble.inferers import ImplicitEnsembleInferer
from bundle.evaluation.figures import plot_steps
from bundle.evaluation.metrics import overlap, uncertainty_metrics
from bundle.io.atomic import write_text
from bundle.io.checkpoints import load_weights
from bundle.workflow.configs import load_config
from bundle.workflow.options import run_cli


def _tumour_slices(case: dict, loader: Compose, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    item = loader(dict(case))
    label, image = item["label"], item["image"]
    picks = tumour_slice_indices(label, count)
    return image[..., picks].movedim(-1, 0), label[..., picks].movedim(-1, 0)


def _score(
    out: torch.Tensor, label: torch.Tensor, image: torch.Tensor, channel: int
) -> tuple[float, float]:
    """Dice and variance ratio of one region's channel of the inferer's (S, 2 C, H, W) output."""
    channels = label.shape[1]
    mean = out[:, channel : channel + 1].numpy()
    variance = out[:, channels + channel : channels + channel + 1].numpy()
    truth = label[:, channel : channel + 1].numpy() > 0
    brain = (image.abs() > 0).any(1, keepdim=True).numpy()
    seg = mean > 0.5
    return overlap(seg, truth)[0], uncertainty_metrics(variance, seg, truth, brain)["var_ratio"]


def sweep(
    case_dirs: list[str] = ("data/demo/BraTS20_Training_005", "data/demo/BraTS20_Training_027"),
    ckpt_path: str = "models/model.pt",
    steps: tuple[int, ...] = (5, 10, 20, 50, 100),
    samplers: tuple[str, ...] = ("ddim", "dpmpp_2m"),
    num_samples: int = 5,
    slices_per_case: int = 3,
    ensemble_sizes: tuple[int, ...] = (1, 2, 4, 8, 16),
    slice_counts: tuple[int, ...] = (20, 40, 80, 155),
    output: str | None = None,
) -> str:
    """Run both parts and return (and write) the markdown report."""
    infer = load_config("inference.yaml")
    network = infer.get_parsed_content("network_def")
    load_weights(network, ckpt_path)
    scheduler = infer.get_parsed_content("noise_scheduler")
    mask_channels = infer.get_parsed_content("num_mask_channels")
    wt = region_channel(infer.get_parsed_content("region_names"), "wt")  # what is scored
    loader = Compose(load_config("train.yaml").get_parsed_content("load_transforms"))
    cases = [find_cases(d)[0] for d in case_dirs]
    parts = [_tumour_slices(case, loader, slices_per_case) for case in cases]
    image = torch.cat([p[0] for p in parts])
    label = torch.cat([p[1] for p in parts])

    lines = [
        f"Part 1: {len(image)} tumour slices of {len(cases)} held-out cases, {num_samples} "
        f"samples each, {torch.get_num_threads()} CPU threads.",
        "",
        "| sampler | steps | Dice | variance ratio wrong/right | seconds |",
        "|---|---|---|---|---|",
    ]
    runs = [("ddpm", 1000)] + [(s, k) for s in samplers for k in steps]
    results = {}
    for name, k in runs:
        inferer = ImplicitEnsembleInferer(
            make_sampler(name, k, scheduler), num_samples=num_samples, mask_channels=mask_channels
        )
        start = time.perf_counter()
        out = inferer(image, network)
        took = time.perf_counter() - start
        results[name, k] = _score(out, label, image, wt)
        dice, ratio = results[name, k]
        lines.append(f"| {name} | {k} | {dice:.4f} | {ratio:.1f} | {took:.1f} |")
        print(lines[-1], flush=True)
    if output:
        plot_steps(results, samplers, steps, Path(output).with_suffix(".png"))

    volume = infer.get_parsed_content("preprocessing")(dict(cases[0]))["image"][None]
    default = make_sampler(infer["sampler"], infer["sampling_steps"], scheduler)

    def ensemble(size: int) -> ImplicitEnsembleInferer:
        return ImplicitEnsembleInferer(default, num_samples=size, mask_channels=mask_channels)

    lines += [
        "",
        f"Part 2: whole-volume sampling of {cases[0]['case_id']}, "
        f"{infer['sampler']} {infer['sampling_steps']} steps.",
        "",
    ]
    lines += ["| ensemble size | seconds |", "|---|---|"]
    sizes, seconds = [], []
    for n in ensemble_sizes:
        start = time.perf_counter()
        ensemble(n)(volume, network)
        sizes.append(n)
        seconds.append(time.perf_counter() - start)
        lines.append(f"| {n} | {seconds[-1]:.1f} |")
        print(lines[-1], flush=True)
    slope, intercept = np.polyfit(sizes, seconds, 1)
    lines += ["", f"Least squares: {slope:.2f} s per ensemble member + {intercept:.1f} s.", ""]
    lines += ["| axial slices (5 samples) | seconds |", "|---|---|"]
    counts, seconds = [], []
    for count in slice_counts:
        part = volume[..., : min(count, volume.shape[-1])]
        start = time.perf_counter()
        ensemble(5)(part, network)
        counts.append(part.shape[-1])
        seconds.append(time.perf_counter() - start)
        lines.append(f"| {counts[-1]} | {seconds[-1]:.1f} |")
        print(lines[-1], flush=True)
    slope, intercept = np.polyfit(counts, seconds, 1)
    lines += [
        "",
        f"Least squares: {slope:.3f} s per slice + {intercept:.1f} s (slices without "
        "brain cost nothing, so the first slices of a volume are cheap).",
    ]
    report = "\n".join(lines) + "\n"
    if output:
        write_text(output, report)
    return report


if __name__ == "__main__":
    run_cli(sweep)
