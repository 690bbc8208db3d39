"""Side-by-side speed benchmark: the reference sampling loop against our inference, on a real case.

    python -m scripts.benchmark [--case_dir demo/Brats18_TCIA03_265_1 --output docs/benchmark.md]

(a) The reference procedure (the public guided-diffusion fork): ancestral DDPM with all 1000
    steps, batch 1, one sample of one whole slice at a time, float32, no slice skipping or
    cropping. It is timed on ``reference_slices`` tumour slices and extrapolated linearly to
    every axial slice of the volume and every ensemble member (the output says so).
(b) Our inference as ``configs/inference.yaml`` ships it (brain slices only, each in its brain
    box, samples x slices batched, the configured sampler and steps, bfloat16 where the CPU computes
    it), whole volume, ``num_samples`` samples, from loading the files to the maps in the
    input's grid; and the same with one network call at a time, with one box over all slices,
    and in float32 (``VARIANTS``).
    All are timed in ``repeats`` rounds (medians), each round followed by its share of (a)'s
    slices, so that a shared machine's load falls on all alike.
(c) With ``network_options``: one network forward pass under every way of running it on the
    CPU (``scripts/network_options.py``).

All use the same network weights on the same case, in one run. Printed: seconds per volume, the
speed-up (a)/(b), Dice of each against the ground truth on the reference's slices (slice by
slice, with the standard error of the gap: a few slices' mean moves by a few hundredths) and on
the whole volume (input geometry), how far each variant's masks and variance are from float32's,
the variance's AUROC for errors (does it still mark them?), the images per
network call that ``memory_budget_mb`` gives, and peak resident memory.
"""

from __future__ import annotations

import json
import resource
import statistics
import time

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from bundle.data.layouts import find_cases
from bundle.data.regions import region_channel
from bundle.data.transforms import tumour_slice_indices
from bundle.diffusion.process import network_input, x0_to_probability
from bundle.diffusion.samplers import DDPMSampler
from bundle.ensemble.inferers import brain_box
from bundle.ensemble.precision import precision_mode
from bundle.evaluation.metrics import overlap, uncertainty_metrics
from bundle.evaluation.network_speed import markdown as options_markdown
from bundle.evaluation.network_speed import measure as measure_options
from bundle.io.atomic import publish
from bundle.io.checkpoints import load_weights
from bundle.workflow.configs import load_config
from bundle.workflow.options import flag, run_cli

BASELINE = "float32 (amp false)"
VARIANTS = {
    "default": {},
    "one network call at a time (cpu_workers 1)": {"cpu_workers": 1},
    "one box over all slices (slice_box_multiple 0)": {"slice_box_multiple": 0},
    BASELINE: {"amp": False},
}
"""inference.yaml overrides of (b) and its variants; BASELINE is the default before bfloat16 on
the CPU, and the others' masks and variance are compared with its; ``cpu_workers`` 1 is the
default before network calls ran side by side, ``slice_box_multiple`` 0 before each slice was
sampled in its own box."""


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reference_sample(
    network, scheduler, image: torch.Tensor, mask_channels: int, seed: int
) -> tuple[torch.Tensor, float]:
    """One 1000-step ancestral DDPM sample of one slice, batch 1; returns the (C, H, W) mask
    probabilities and seconds."""
    sampler = DDPMSampler(scheduler)
    generator = torch.Generator(image.device).manual_seed(seed)
    noise = torch.randn(
        (1, mask_channels, *image.shape[-2:]), generator=generator, device=image.device
    )

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return network(x=network_input(x_t, image[None]), timesteps=t)

    start = time.perf_counter()
    with torch.inference_mode():
        x0 = sampler.sample(denoise, noise, generator=generator)
    return x0_to_probability(x0)[0].cpu(), time.perf_counter() - start


def run_ours(config: ConfigParser, case: dict, network: torch.nn.Module) -> tuple[float, dict]:
    """Whole-volume inference as ``config`` says, to the segmentation in the input's grid (no
    file writing); seconds, and the network-grid output ``pred``, input-grid ``seg`` and the
    images per network call that the memory budget gave (``batching``)."""
    start = time.perf_counter()
    item = config.get_parsed_content("preprocessing")(dict(case))
    inferer = config.get_parsed_content("inferer")
    inferer.progress = False
    device = torch.device(config.get_parsed_content("device"))
    item["pred"] = inferer(item["image"][None].to(device), network)[0].cpu()
    grid = item["pred"].as_tensor().clone()
    post = config.get_parsed_content("postprocessing")
    inverted = post(item)
    seconds = time.perf_counter() - start
    return seconds, {
        "pred": grid,
        "seg": inverted["pred"].numpy().max(0) > 0,  # any region: the whole tumour
        "batching": {
            "precision": precision_mode(device, inferer.amp),
            "memory_budget_mb": inferer.memory_budget_mb,
            **inferer.batching,
        },
    }


def whole_tumour_maps(out: dict, wt: int, mask_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole tumour's mean and variance in a network-grid output (C means, C variances, C
    votes)."""
    return out["pred"][wt].numpy(), out["pred"][mask_channels + wt].numpy()


def compare(
    out: dict,
    baseline: dict,
    label: torch.Tensor,
    brain: np.ndarray,
    wt: int,
    mask_channels: int,
    threshold: float,
) -> dict:
    """A variant's network-grid maps against the baseline's and the label, each mean above
    ``threshold`` (the config's segmentation threshold)."""
    mean, var = whole_tumour_maps(out, wt, mask_channels)
    base_mean, base_var = whole_tumour_maps(baseline, wt, mask_channels)
    seg, truth = mean > threshold, label.numpy() > 0
    quality = uncertainty_metrics(var, seg, truth, brain)
    return {
        "dice_vs_baseline": overlap(seg, base_mean > threshold)[0],
        "voxels_differing": int((seg != (base_mean > threshold)).sum()),
        "max_abs_mean_difference": float(np.abs(mean - base_mean).max()),
        "max_abs_variance_difference": float(np.abs(var - base_var).max()),
        "variance_total_ratio": float(var.sum() / max(base_var.sum(), 1e-12)),
        "variance_auroc": quality["auroc"],
        "variance_ratio": quality["var_ratio"],
    }


def benchmark(
    case_dir: str = "demo/Brats18_TCIA03_265_1",
    ckpt_path: str | None = "models/model.pt",
    configs: list[str] = ("inference.yaml",),
    num_samples: int = 5,
    reference_slices: int = 10,
    repeats: int = 3,
    network_options: bool = True,
    threads: int | None = None,
    output: str | None = None,
    note: str | None = None,
    **overrides: object,
) -> dict:
    """Run (b) with its variants, (a) and (c) (CPU only) on one labelled case. ``configs`` are
    layered in order (``"['inference.yaml','paper.yaml']"``: the paper's network);
    ``ckpt_path`` None times untrained weights (its Dice means nothing); ``overrides`` are
    config keys, applied to all; ``note`` is printed under the title (how loaded the machine
    was)."""
    if threads:
        torch.set_num_threads(threads)
    configs = list(configs)
    settings = {"num_samples": num_samples, "dataset_dir": case_dir, **overrides}
    infer = load_config(configs, settings)
    case = find_cases(case_dir)[0]
    network = infer.get_parsed_content("network")
    network = load_weights(network, ckpt_path) if ckpt_path else network.eval()
    scheduler = infer.get_parsed_content("noise_scheduler")
    mask_channels = infer.get_parsed_content("num_mask_channels")
    wt = region_channel(infer.get_parsed_content("region_names"), "wt")  # what is compared
    threshold = infer.get_parsed_content("segmentation_threshold")  # ours and the reference's
    device = next(network.parameters()).device
    variants = {name: load_config(configs, settings | v) for name, v in VARIANTS.items()}

    # the network grid, with the label: the reference's slices and slice-wise comparisons
    train = load_config(["train.yaml", *configs[1:]], settings)
    grid = Compose(train.get_parsed_content("load_transforms"))(dict(case))
    label, image = grid["label"][wt], grid["image"]
    brain = (image.abs() > 0).any(0).numpy()
    picks = tumour_slice_indices(grid["label"], reference_slices)

    # (b) and its variants, and (a) on a share of the picked slices, in interleaved rounds
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    outputs, times, members = {}, [], {z: [] for z in picks}
    ours_peak = 0.0
    for round_ in range(repeats):
        for name, config in variants.items():
            took, outputs[name] = run_ours(config, case, network)
            seconds[name].append(took)
        ours_peak = ours_peak or _peak_rss_mb()  # after the first round, before (a)
        for z in picks[round_::repeats]:  # every ensemble member of the reference
            for member in range(num_samples):
                slice_ = image[..., z].to(device)
                mask, took = reference_sample(
                    network, scheduler, slice_, mask_channels, seed=1000 * z + member
                )
                members[z].append(mask)
                times.append(took)

    truth = np.asanyarray(nib.load(case["label"]).dataobj) > 0
    scores, ours_slices = {}, {}
    slice_truth = {z: label[..., z].numpy() > 0 for z in picks}
    for name in VARIANTS:
        mean = whole_tumour_maps(outputs[name], wt, mask_channels)[0]
        ours_slices[name] = [overlap(mean[..., z] > threshold, slice_truth[z])[0] for z in picks]
        scores[name] = {
            "seconds_per_volume": statistics.median(seconds[name]),
            "seconds_each_round": seconds[name],
            "dice_volume": overlap(outputs[name]["seg"], truth)[0],
            "dice_reference_slices": float(np.mean(ours_slices[name])),
            **compare(outputs[name], outputs[BASELINE], label, brain, wt, mask_channels, threshold),
        }
    ref_dice = [
        overlap(torch.stack(members[z]).mean(0)[wt].numpy() > threshold, slice_truth[z])[0]
        for z in picks
    ]
    # the gap slice by slice: its spread says how far a few slices' means can be trusted
    gaps = np.array(ours_slices["default"]) - np.array(ref_dice)
    per_sample_slice = float(np.mean(times))
    depth = image.shape[-1]
    reference_seconds = per_sample_slice * depth * num_samples

    ours = scores["default"]
    result = {
        "case": case["case_id"],
        "configs": configs,
        "weights": ckpt_path or "untrained",
        "device": str(device),
        "grid": list(image.shape[1:]),
        "box": list(_box_shape(image)),
        "num_samples": num_samples,
        "sampler": infer["sampler"],
        "sampling_steps": infer["sampling_steps"],
        "repeats": repeats,
        "variants": scores,
        "reference": {
            "seconds_per_slice_sample": per_sample_slice,
            "timed_slice_samples": len(times),
            "seconds_per_volume_extrapolated": reference_seconds,
            "extrapolation": f"{per_sample_slice:.1f} s x {depth} slices x {num_samples} samples",
            "dice_reference_slices": float(np.mean(ref_dice)),
            "slices": picks,
            "dice_each_slice": ref_dice,
        },
        "dice_each_reference_slice_ours": ours_slices["default"],
        "speedup": reference_seconds / ours["seconds_per_volume"],
        "dice_gap_reference_slices": float(gaps.mean()),
        "dice_gap_standard_error": float(gaps.std(ddof=1) / np.sqrt(len(gaps)))
        if len(gaps) > 1
        else float("nan"),
        "batching": outputs["default"]["batching"],
        "peak_rss_mb_ours": ours_peak,
        "peak_rss_mb": _peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "note": note,
    }
    if flag(network_options) and device.type == "cpu":
        # (c) in the brain box of this case, as the inferer samples it
        result["network_options"] = measure_options(network, *result["box"])
    publish(render(result), output)
    return result


def _box_shape(image: torch.Tensor) -> tuple[int, int]:
    """Height and width of the brain's in-plane bounding box, as the inferer grows it."""
    brain = (image.abs() > 0).any(0, keepdim=True).movedim(-1, 0)
    rows, cols = brain_box(brain[brain.flatten(1).any(1)], 8)
    return rows.stop - rows.start, cols.stop - cols.start


def _slice_gaps(r: dict) -> str:
    """Each reference slice's Dice, ours / the reference's."""
    ref = r["reference"]
    ours, theirs = r["dice_each_reference_slice_ours"], ref["dice_each_slice"]
    pairs = zip(ref["slices"], ours, theirs, strict=True)
    return ", ".join(f"z {z} {a:.2f} / {b:.2f}" for z, a, b in pairs)


def render(r: dict) -> str:
    """The whole report (docs/benchmark.md): title, what was measured, tables, the JSON."""
    head = [
        "# Speed: our inference against the reference sampling loop",
        "",
        "Measured in one run by `python -m scripts.benchmark` (its docstring says how).",
        "(a) the reference code's procedure: ancestral DDPM, 1000 steps, batch 1, one sample of "
        "one whole slice at a time, float32, timed on tumour slices and extrapolated to every "
        "slice and sample. (b) `configs/inference.yaml` as shipped, whole volume, from the files "
        "to the maps in the input's grid, and its variants (one network call at a time; one box "
        "over all slices; float32), in interleaved rounds with (a). (c) one network forward "
        "pass per way of running it on the CPU.",
    ]
    if r.get("note"):
        head += ["", f"**{r['note']}**"]
    parts = ["\n".join(head), markdown(r)]
    if r.get("network_options"):
        parts.append(options_markdown(r["network_options"], *r["box"]))
    parts.append("```json\n" + json.dumps(r, indent=2) + "\n```")
    return "\n\n".join(parts) + "\n"


def markdown(r: dict) -> str:
    """The benchmark's (a) and (b) as tables."""
    ref, ours, batching = r["reference"], r["variants"]["default"], r["batching"]
    lines = [
        f"Case {r['case']}, configs {r['configs']}, weights {r['weights']}, network grid "
        f"{r['grid']}, {r['num_samples']} samples, {r['sampler']} {r['sampling_steps']} steps, "
        f"device {r['device']}, {r['threads']} CPU threads; (b) medians of {r['repeats']} "
        "interleaved rounds.",
        "",
        "| procedure | s / volume | Dice (reference slices) | Dice (volume) |",
        "|---|---|---|---|",
        f"| (a) reference: DDPM 1000 steps, batch 1, slice by slice, float32 "
        f"(extrapolated: {ref['extrapolation']}) | {ref['seconds_per_volume_extrapolated']:.0f}"
        f" | {ref['dice_reference_slices']:.3f} | - |",
        f"| (b) ours: inference.yaml ({batching['precision']}) "
        f"| {ours['seconds_per_volume']:.1f} "
        f"| {ours['dice_reference_slices']:.3f} | {ours['dice_volume']:.3f} |",
        "",
        f"Speed-up (a)/(b): **{r['speedup']:.0f}x**; Dice on the reference's slices "
        f"{r['dice_gap_reference_slices']:+.3f} from the reference's (standard error of the "
        f"slice-by-slice gap {r['dice_gap_standard_error']:.3f}, "
        f"{len(ref['slices'])} slices: {_slice_gaps(r)}). Memory: "
        f"{batching['activation_mb_per_image']:.1f} MB of activations an image, so "
        f"memory_budget_mb {batching['memory_budget_mb']} gives {batching['images_per_call']} "
        f"images a network call; peak resident memory after (b) {r['peak_rss_mb_ours']:.0f} MB, "
        f"after (a) {r['peak_rss_mb']:.0f} MB.",
        "",
        f"(b) with each speed-up switched off, against `{BASELINE}` (the default before):",
        "",
        "| variant | s / volume | Dice (volume) | Dice vs baseline | voxels differing "
        "| max abs mean diff | max abs var diff | variance total / baseline | var AUROC "
        "| var ratio wrong/right |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in r["variants"].items():
        lines.append(
            f"| {name} | {v['seconds_per_volume']:.1f} | {v['dice_volume']:.3f} "
            f"| {v['dice_vs_baseline']:.4f} | {v['voxels_differing']} "
            f"| {v['max_abs_mean_difference']:.3f} | {v['max_abs_variance_difference']:.3f} "
            f"| {v['variance_total_ratio']:.3f} | {v['variance_auroc']:.3f} "
            f"| {v['variance_ratio']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(benchmark)
