"""Side-by-side speed benchmark: the reference sampling loop against our default inference.

    python -m scripts.benchmark --case_dir data/demo_test/BraTS20_Training_031 \
        --output docs/benchmark.md

(a) The reference procedure (the public guided-diffusion fork): ancestral DDPM with all 1000
    steps, batch 1, one sample of one whole slice at a time, no slice skipping or cropping. It is
    timed on ``reference_slices`` tumour slices and extrapolated linearly to every axial slice of
    the volume and every ensemble member (the output says so).
(b) Our default inference (inference.yaml as configured: brain slices only, brain bounding box,
    samples x slices batched, DDIM), whole volume, ``num_samples`` samples.

Both use the same network weights on the same case, in one run. Printed: seconds per volume,
their ratio, Dice of each against the ground truth on the reference's slices (and ours on the
whole volume, in the input's geometry), and peak resident memory.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Compose

from bundle.data.layouts import find_cases
from bundle.data.regions import region_channel
from bundle.data.transforms import tumour_slice_indices
from bundle.diffusion.process import network_input, x0_to_probability
from bundle.diffusion.samplers import DDPMSampler
from bundle.evaluation.metrics import overlap
from bundle.io.checkpoints import network_weights
from bundle.workflow.configs import load_config
from bundle.workflow.options import run_cli


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reference_sample(
    network, scheduler, image: torch.Tensor, mask_channels: int, seed: int
) -> tuple[torch.Tensor, float]:
    """One 1000-step ancestral DDPM sample of one slice, batch 1; returns the (C, H, W) mask
    probabilities and seconds."""
    sampler = DDPMSampler(scheduler)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((1, mask_channels, *image.shape[-2:]), generator=generator)

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return network(x=network_input(x_t, image[None]), timesteps=t)

    start = time.perf_counter()
    with torch.inference_mode():
        x0 = sampler.sample(denoise, noise, generator=generator)
    return x0_to_probability(x0)[0], time.perf_counter() - start


def benchmark(
    case_dir: str = "data/demo_test/BraTS20_Training_031",
    ckpt_path: str = "models/model.pt",
    num_samples: int = 5,
    reference_slices: int = 3,
    threads: int | None = None,
    output: str | None = None,
    **overrides: object,
) -> dict:
    """Run (b) then (a) on one labelled case; ``overrides`` are inference.yaml keys."""
    if threads:
        torch.set_num_threads(threads)
    settings = {"ckpt_path": ckpt_path, "num_samples": num_samples, "dataset_dir": case_dir}
    settings.update(overrides)
    infer = load_config("inference.yaml", settings)
    case = find_cases(case_dir)[0]
    network = infer.get_parsed_content("network")
    network.load_state_dict(network_weights(ckpt_path))
    network.eval()
    scheduler = infer.get_parsed_content("noise_scheduler")
    mask_channels = infer.get_parsed_content("num_mask_channels")
    wt = region_channel(infer.get_parsed_content("region_names"), "wt")  # what is compared

    # (b) our default: preprocessing, ensemble over the whole volume, back to the input grid
    start = time.perf_counter()
    item = infer.get_parsed_content("preprocessing")(dict(case))
    inferer = infer.get_parsed_content("inferer")
    inferer.progress = False
    item["pred"] = inferer(item["image"][None], network)[0]
    post = infer.get_parsed_content("postprocessing")
    inverted = Compose(post.transforms[:2])(item)  # Invertd, SplitEnsembled: no file writing
    ours_seconds = time.perf_counter() - start
    ours_peak = _peak_rss_mb()
    truth = np.asanyarray(nib.load(case["label"]).dataobj) > 0
    ours_dice = overlap(inverted["pred"][wt].numpy() > 0, truth)[0]

    # the network grid, with the label, for slice-wise comparisons
    train = load_config("train.yaml", {k: v for k, v in settings.items() if k != "ckpt_path"})
    grid = Compose(train.get_parsed_content("load_transforms"))(dict(case))
    label, image = grid["label"][wt], grid["image"]
    picks = tumour_slice_indices(grid["label"], reference_slices)
    ours_grid = item["pred"][wt]  # ensemble mean in the network grid

    # (a) the reference loop on the picked slices, every ensemble member
    seconds, ref_dice, our_dice_slices = [], [], []
    for z in picks:
        masks = []
        for member in range(num_samples):
            mask, took = reference_sample(
                network, scheduler, image[..., z], mask_channels, seed=1000 * z + member
            )
            masks.append(mask)
            seconds.append(took)
        reference_mean = torch.stack(masks).mean(0)[wt]
        ref_dice.append(overlap(reference_mean.numpy() > 0.5, label[..., z].numpy() > 0)[0])
        our_dice_slices.append(
            overlap(ours_grid[..., z].numpy() > 0.5, label[..., z].numpy() > 0)[0]
        )
    per_sample_slice = float(np.mean(seconds))
    depth = image.shape[-1]
    reference_seconds = per_sample_slice * depth * num_samples

    result = {
        "case": case["case_id"],
        "grid": list(image.shape[1:]),
        "num_samples": num_samples,
        "ours": {
            "sampler": settings.get("sampler", infer["sampler"]),
            "sampling_steps": settings.get("sampling_steps", infer["sampling_steps"]),
            "seconds_per_volume": ours_seconds,
            "dice_volume": ours_dice,
            "dice_reference_slices": float(np.mean(our_dice_slices)),
            "peak_rss_mb": ours_peak,
        },
        "reference": {
            "seconds_per_slice_sample": per_sample_slice,
            "timed_slice_samples": len(seconds),
            "seconds_per_volume_extrapolated": reference_seconds,
            "extrapolation": f"{per_sample_slice:.1f} s x {depth} slices x {num_samples} samples",
            "dice_reference_slices": float(np.mean(ref_dice)),
        },
        "speedup": reference_seconds / ours_seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }
    report = markdown(result)
    print(report)
    if output:
        Path(output).write_text(report + "\n```json\n" + json.dumps(result, indent=2) + "\n```\n")
    return result


def markdown(r: dict) -> str:
    """The benchmark as a table."""
    ours, ref = r["ours"], r["reference"]
    return "\n".join(
        [
            f"Case {r['case']}, network grid {r['grid']}, {r['num_samples']} samples, "
            f"{r['threads']} CPU threads.",
            "",
            "| procedure | s / volume | Dice (reference slices) | Dice (volume) |",
            "|---|---|---|---|",
            f"| (a) reference: DDPM 1000 steps, batch 1, slice by slice "
            f"(extrapolated: {ref['extrapolation']}) | {ref['seconds_per_volume_extrapolated']:.0f}"
            f" | {ref['dice_reference_slices']:.3f} | - |",
            f"| (b) ours: {ours['sampler']} {ours['sampling_steps']} steps, batched, brain only "
            f"| {ours['seconds_per_volume']:.1f} | {ours['dice_reference_slices']:.3f} "
            f"| {ours['dice_volume']:.3f} |",
            "",
            f"Speed-up (a)/(b): **{r['speedup']:.0f}x**. Peak resident memory after (b): "
            f"{ours['peak_rss_mb']:.0f} MB; after both: {r['peak_rss_mb']:.0f} MB.",
        ]
    )


if __name__ == "__main__":
    run_cli(benchmark)
