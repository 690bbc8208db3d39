"""What makes the implicit ensemble's samples disagree where the model is wrong? (issue 16)

    python -m scripts.uncertainty_study --dataset_dir ../shared/data/brats18 \
        --split_file configs/brats18_split.json \
        --models "{'x0': 'runs/wt_x0/model.pt', 'epsilon': 'runs/wt_eps/model.pt'}" \
        --output docs/uncertainty

Each model (its prediction type and settings are read from the checkpoint; a list of checkpoints
trained alike is one model whose sample i comes from the (i % K)-th network, a seed ensemble)
samples ``num_samples`` masks of every ``slice_stride``-th brain slice of the held-out cases
(``sides`` of the split, in the network's grid) for every sampler setting: DDIM with ``etas`` x
``steps``, and the paper's 1000-step DDPM on ``ddpm_slices`` tumour slices per case. For each
setting and ensemble size k (the first k samples) it scores, per case and then averaged over cases:
the ensemble's Dice (mean > 0.5) and its samples' Dice each alone (averaged), the variance's voxel
AUROC for "the segmentation is wrong" inside the brain, the fraction of wrong voxels with variance,
UEO, ECE of the mean map, QU-BraTS and the case score
(:func:`bundle.evaluation.metrics.expected_dice_gap`) with its Spearman correlation with Dice; with
``draws`` > 1, averaged over that many independent draws of the samples. Writes ``study.csv``,
``study.md`` and figures under ``output`` and prints the setting that :func:`choose` picks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.transforms import Compose  # noqa: E402

from bundle.data.datalist import build_datalist  # noqa: E402
from bundle.data.transforms import SliceContextd  # noqa: E402
from bundle.diffusion.samplers import make_sampler  # noqa: E402
from bundle.ensemble.inferers import STATISTICS, THRESHOLD, ImplicitEnsembleInferer  # noqa: E402
from bundle.ensemble.networks import NetworkEnsemble  # noqa: E402
from bundle.evaluation.metrics import (  # noqa: E402
    expected_calibration_error,
    expected_dice_gap,
    nan_mean,
    overlap,
    spearman,
    uncertainty_metrics,
)
from bundle.io.atomic import write_csv, write_text  # noqa: E402
from bundle.io.checkpoints import describe_scheduler, load_weights  # noqa: E402
from bundle.workflow.configs import BUNDLE_ROOT, load_config  # noqa: E402
from bundle.workflow.options import OptionError, run_cli  # noqa: E402

ENSEMBLE = 5
"""The ensemble size the defaults are chosen for (the shipped inference's)."""
COLUMNS = (
    "dice",
    "single_dice",
    "auroc",
    "errors_with_variance",
    "ueo",
    "ece",
    "qu_brats",
    "case_uncertainty",
)


def held_out_slices(
    dataset_dir: str,
    split_file: str | None,
    sides: Sequence[str],
    slice_stride: int,
    overrides: dict | None = None,
) -> list[dict]:
    """Every ``slice_stride``-th brain slice of each case of ``sides``, in the network's grid,
    through the training config's own loading transforms: image (S, 4, H, W), label (S, C, H,
    W), brain (S, H, W), the indices of the slices with tumour and the side it comes from; and
    the whole volume with the picked slices' indices, from which :func:`model_slices` gives a
    network trained with neighbouring slices its input."""
    settings = {
        **(overrides or {}),
        "dataset_dir": dataset_dir,
        "split_file": split_file,
        "context_slices": 0,
    }
    parser = load_config("train.yaml", settings)
    datalist = build_datalist(dataset_dir, validate=False, split_file=split_file)
    loader = Compose(parser.get_parsed_content("load_transforms"))
    cases = []
    for side, case in [(name, c) for name in sides for c in datalist[name]]:
        item = loader(dict(case))
        image, label = item["image"].movedim(-1, 0), item["label"].movedim(-1, 0)
        brain = (image.abs() > 0).any(1)
        picks = torch.nonzero(brain.flatten(1).any(1)).flatten()[::slice_stride]
        tumour = torch.nonzero(label[picks].flatten(1).any(1)).flatten()
        cases.append(
            {
                "case_id": case["case_id"],
                "side": side,
                "image": image[picks],
                "label": label[picks].numpy() > 0,
                "brain": brain[picks].numpy(),
                "tumour_slices": tumour.tolist(),  # a list: one index still selects a slice axis
                "volume": item["image"],
                "picks": picks,
            }
        )
    return cases


def stored_context(ckpt: str | Sequence[str]) -> tuple[int, int] | None:
    """The neighbouring slices (k, step) the checkpoint's network was trained with, None for a
    2-D network; of a list of checkpoints, the first's (:func:`load_model` checks they match)."""
    first = ckpt if isinstance(ckpt, str) else ckpt[0]
    return _slice_context(_stored_settings(first))


def _stored_settings(ckpt: str) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["settings"]


def _slice_context(settings: dict) -> tuple[int, int] | None:
    context = settings.get("slice_context")
    return tuple(context) if context else None


def model_slices(case: dict, context: tuple[int, int] | None) -> torch.Tensor:
    """A case's picked slices as a network trained with ``context`` (:func:`stored_context`)
    takes them: its own four channels, then its neighbours' (:class:`SliceContextd`)."""
    if not context:
        return case["image"]
    stacked = SliceContextd("image", *context)({"image": case["volume"]})["image"]
    return stacked.movedim(-1, 0)[case["picks"]]


def load_model(
    ckpt: str | Sequence[str], overrides: dict | None = None
) -> tuple[torch.nn.Module, object]:
    """The network and noise scheduler the checkpoint was trained with, from inference.yaml with
    ``overrides`` and the settings stored in the checkpoint (prediction type, variance type).
    A list of checkpoints (trained alike) gives a :class:`NetworkEnsemble` of their networks,
    whose sample i comes from the (i % K)-th."""
    if not isinstance(ckpt, str):
        members = [load_model(path, overrides) for path in ckpt]
        kinds = {describe_scheduler(scheduler)["prediction_type"] for _, scheduler in members}
        if len(kinds) > 1:
            raise OptionError(f"the checkpoints {list(ckpt)} predict different things: {kinds}")
        contexts = {stored_context(path) for path in ckpt}
        if len(contexts) > 1:
            raise OptionError(f"the checkpoints {list(ckpt)} see different slices: {contexts}")
        ensemble = NetworkEnsemble(members[0][0], len(members))
        for target, (network, _) in zip(ensemble, members, strict=True):
            target.load_state_dict(network.state_dict())
        return ensemble.eval(), members[0][1]
    stored = _stored_settings(ckpt)
    scheduler, context = stored["scheduler"], _slice_context(stored) or (0, 1)
    parser = load_config(
        "inference.yaml",
        {
            **(overrides or {}),
            "prediction_type": scheduler["prediction_type"],
            "learn_sigma": scheduler["variance_type"] == "learned_range",
            "context_slices": context[0],
            "context_step": context[1],
        },
    )
    network = parser.get_parsed_content("network_def")
    load_weights(network, ckpt)
    return network.eval(), parser.get_parsed_content("noise_scheduler")


def draw(
    network: torch.nn.Module,
    scheduler: object,
    image: torch.Tensor,
    sampler: str,
    steps: int,
    eta: float,
    num_samples: int,
    seed: int,
) -> np.ndarray:
    """``num_samples`` masks in [0, 1] of (S, 4 (2k + 1), H, W) slices: (N, S, C, H, W)."""
    inferer = ImplicitEnsembleInferer(
        make_sampler(sampler, steps, scheduler, eta=eta),
        num_samples=num_samples,
        seed=seed,
        return_samples=True,
    )
    out = inferer(image, network)
    channels = out.shape[1] // (len(STATISTICS) + num_samples)
    first = len(STATISTICS) * channels
    samples = out[:, first:].reshape(len(image), num_samples, channels, *out.shape[2:])
    return samples.movedim(1, 0).numpy()


SAMPLE_FORMS = ("soft", "binary")
"""How the samples enter the mean and variance: as the sampler's [0, 1] x0 estimates, or each
thresholded at 0.5 first (N masks, the mean then a vote)."""
SETTING = ("model", "sampler", "steps", "eta", "samples")
"""What makes one setting of the study: its rows are grouped by these (and by side and size)."""


def score(samples: np.ndarray, label: np.ndarray, brain: np.ndarray) -> dict[str, float]:
    """Whole-tumour metrics of an ensemble (N, S, C, H, W) of one case's slices; the case score
    from the samples' votes, as inference computes it."""
    mean, variance = samples[:, :, 0].mean(0), samples[:, :, 0].var(0)
    truth = label[:, 0]
    seg = mean > THRESHOLD
    row = {
        "dice": overlap(seg, truth)[0],
        # each sample scored alone, averaged: the one-sample Dice the ensemble's gain is against
        "single_dice": float(np.mean([overlap(s > THRESHOLD, truth)[0] for s in samples[:, :, 0]])),
    }
    row.update(uncertainty_metrics(variance, seg, truth, brain))
    row["ece"] = expected_calibration_error(mean[brain], truth[brain])
    row["case_uncertainty"] = expected_dice_gap((samples[:, :, 0] > THRESHOLD).mean(0))
    return {key: row[key] for key in COLUMNS}


def choose(
    summary: list[dict],
    size: int = 5,
    dice_margin: float = 0.005,
    min_auroc: float = 0.90,
    auroc_tie: float = 0.015,
) -> dict:
    """The default by a stated rule: among ``size``-sample ensembles, the fewest network
    evaluations (steps) whose Dice is within ``dice_margin`` of the best and whose AUROC is at
    least ``min_auroc``. If none reaches that AUROC, the settings within the Dice margin whose
    AUROC is within ``auroc_tie`` of the highest (what one draw of the samples moves it by) are
    tied, and the tie goes to the largest ensemble gain over one sample, then to fewer steps."""
    five = [s for s in summary if s["k"] == size]
    best = max(s["dice"] for s in five)
    close = [s for s in five if s["dice"] >= best - dice_margin]
    good = [s for s in close if s["auroc"] >= min_auroc]
    if good:
        return min(good, key=lambda s: (s["steps"], -s["auroc"]))
    top = max(s["auroc"] for s in close)
    tied = [s for s in close if s["auroc"] >= top - auroc_tie]
    return max(tied, key=lambda s: (s["dice"] - s["single_dice"], -s["steps"]))


def summarise(rows: list[dict]) -> list[dict]:
    """Means over the cases (and draws) of each side per model, setting and ensemble size, and
    the case score's Spearman correlation with Dice across the cases (each averaged over its
    draws)."""
    keys = ("side", *SETTING, "k")
    summary = []
    for group_key in dict.fromkeys(tuple(r[k] for k in keys) for r in rows):
        group = [r for r in rows if tuple(r[k] for k in keys) == group_key]
        entry = dict(zip(keys, group_key, strict=True))
        cases = list(dict.fromkeys(r["case"] for r in group))
        entry["cases"] = len(cases)
        entry["draws"] = len(group) // len(cases)
        entry["seconds"] = group[0]["seconds"]
        for column in COLUMNS:
            entry[column] = nan_mean([r[column] for r in group])
        per_case = [[r for r in group if r["case"] == case] for case in cases]
        entry["spearman"] = spearman(
            [nan_mean([r["case_uncertainty"] for r in rs]) for rs in per_case],
            [nan_mean([r["dice"] for r in rs]) for rs in per_case],
        )
        summary.append(entry)
    return summary


def markdown(summary: list[dict], sizes: Sequence[int]) -> str:
    """One line per model and setting at the ensemble sizes shown; next to the ensemble's Dice,
    the mean Dice of its k samples each scored alone."""
    lines = [
        "| side | model | sampler | steps | eta | samples | k | Dice | 1-sample Dice (mean of k) "
        "| AUROC | errors with var | UEO | ECE | QU-BraTS | case score | Spearman | s per slice |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        if s["k"] not in sizes:
            continue
        cells = [f"{s[c]:.4f}" if c == "ece" else f"{s[c]:.3f}" for c in COLUMNS]
        lines.append(
            f"| {s['side']} | {s['model']} | {s['sampler']} | {s['steps']} | {s['eta']} "
            f"| {s['samples']} | {s['k']} | {' | '.join(cells)} | {s['spearman']:.2f} "
            f"| {s['seconds']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def _trained(side: str) -> str:
    return "trained on" if side == "training" else "never trained on"


def plot(summary: list[dict], output: Path, side: str) -> list[Path]:
    """For the cases of one side of the split: Dice and AUROC against steps (5 samples), and
    against ensemble size (each model's DDIM settings), and the Dice-AUROC trade-off of every
    setting."""
    paths = []
    ddim = [s for s in summary if s["sampler"] == "ddim"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for model, eta, form in dict.fromkeys((s["model"], s["eta"], s["samples"]) for s in ddim):
        line = sorted(
            (
                s
                for s in ddim
                if (s["model"], s["eta"], s["samples"], s["k"]) == (model, eta, form, ENSEMBLE)
            ),
            key=lambda s: s["steps"],
        )
        steps, name = [s["steps"] for s in line], f"{model}, eta {eta:g}, {form}"
        axes[0].plot(steps, [s["dice"] for s in line], "o-", label=name)
        axes[1].plot(steps, [s["auroc"] for s in line], "o-", label=name)
    for ax, name in zip(axes, ("Dice (5 samples)", "variance AUROC for errors"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("DDIM steps")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{side} cases: real BraTS 2018, {_trained(side)}")
    fig.tight_layout()
    paths.append(output / f"{side}_steps.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key in dict.fromkeys(tuple(s[k] for k in SETTING) for s in summary):
        line = sorted(
            (s for s in summary if tuple(s[k] for k in SETTING) == key), key=lambda s: s["k"]
        )
        if len(line) < 3:
            continue
        label = f"{key[0]} {key[1]} {key[2]} eta {key[3]:g} {key[4]}"
        axes[0].plot([s["k"] for s in line], [s["dice"] for s in line], ".-", label=label)
        axes[1].plot([s["k"] for s in line], [s["auroc"] for s in line], ".-", label=label)
    for ax, name in zip(axes, ("Dice", "variance AUROC for errors"), strict=True):
        ax.set_xlabel("ensemble size")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6)
    fig.suptitle(f"{side} cases: real BraTS 2018, {_trained(side)}")
    fig.tight_layout()
    paths.append(output / f"{side}_ensemble_size.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 5))
    five = [s for s in summary if s["k"] == ENSEMBLE]
    for model in dict.fromkeys(s["model"] for s in five):
        points = [s for s in five if s["model"] == model]
        ax.scatter([s["auroc"] for s in points], [s["dice"] for s in points], label=model)
        for s in points:
            tag = f"{s['sampler']} {s['steps']} eta {s['eta']:g} {s['samples']}"
            ax.annotate(tag, (s["auroc"], s["dice"]), fontsize=6)
    ax.set_xlabel("variance AUROC for errors (brain voxels)")
    ax.set_ylabel("Dice (5 samples)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"Dice against uncertainty, {side} cases")
    fig.tight_layout()
    paths.append(output / f"{side}_tradeoff.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    return paths


def study(
    dataset_dir: str,
    models: dict[str, str | list[str]],
    output: str = "docs/uncertainty",
    split_file: str | None = str(BUNDLE_ROOT / "configs" / "brats18_split.json"),
    sides: Sequence[str] = ("validation", "testing"),
    slice_stride: int = 4,
    steps: Sequence[int] = (1, 2, 5, 10, 25),
    etas: Sequence[float] = (0.0, 1.0),
    num_samples: int = 16,
    ddpm_slices: int = 2,
    seed: int = 0,
    sizes: Sequence[int] = (1, 2, 5, 10, 16),
    overrides: dict | None = None,
    draws: int = 1,
) -> dict:
    """Run the study; returns the setting :func:`choose` picks. ``overrides`` are config keys
    (as on the bundle's command line) for the loading transforms and the network, such as
    ``image_size`` or ``network_def#channels`` when the models were trained with them.
    ``draws`` independent draws of the samples (seeds ``seed``, ``seed + 1``, ...) are scored
    each and averaged: one draw's AUROC moves by about 0.015 (docs/uncertainty.md)."""
    if draws < 1:
        raise OptionError(f"--draws must be >= 1, got {draws}")
    if not isinstance(models, dict) or not models:
        raise OptionError(
            "--models must name each checkpoint, quoted: \"{'name': 'path/model.pt', ...}\"; "
            f"got {models!r}"
        )
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    cases = held_out_slices(dataset_dir, split_file, sides, slice_stride, overrides)
    print(
        f"{len(cases)} cases, {sum(len(c['image']) for c in cases)} slices, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    settings = [("ddim", k, eta) for eta in etas for k in steps]
    settings += [("ddpm", 1000, 1.0)] if ddpm_slices else []
    shown = min(ENSEMBLE, num_samples)
    rows = []
    for model, ckpt in models.items():
        network, scheduler = load_model(ckpt, overrides)
        # each case's input as this network takes it, stacked once for all settings and draws
        context = stored_context(ckpt)
        inputs = {case["case_id"]: model_slices(case, context) for case in cases}
        for sampler, k, eta in settings:
            took, slices, case_rows = 0.0, 0, []
            for case, draw_seed in [(c, seed + d) for c in cases for d in range(draws)]:
                picks = case["tumour_slices"][:ddpm_slices] if sampler == "ddpm" else slice(None)
                image = inputs[case["case_id"]][picks]
                start = time.perf_counter()
                samples = draw(network, scheduler, image, sampler, k, eta, num_samples, draw_seed)
                took, slices = took + time.perf_counter() - start, slices + len(image)
                for form in SAMPLE_FORMS:
                    drawn = samples if form == "soft" else (samples > 0.5).astype(np.float32)
                    for size in range(1, num_samples + 1):
                        metrics = score(drawn[:size], case["label"][picks], case["brain"][picks])
                        case_rows.append(
                            {
                                "side": case["side"],
                                "case": case["case_id"],
                                "seed": draw_seed,
                                "samples": form,
                                "k": size,
                                **metrics,
                            }
                        )
            seconds = took / slices
            setting = {"model": model, "sampler": sampler, "steps": k, "eta": eta}
            rows += [{**setting, "seconds": seconds, **r} for r in case_rows]
            latest = [{**setting, "seconds": seconds, **r} for r in case_rows if r["k"] == shown]
            for five in summarise(latest):
                print(
                    f"{five['side']} {model} {sampler} {k} eta {eta} {five['samples']}: "
                    f"Dice {five['dice']:.3f} (one sample {five['single_dice']:.3f}), "
                    f"AUROC {five['auroc']:.3f}, "
                    f"case score {five['case_uncertainty']:.3f}, "
                    f"{seconds:.3f} s per slice",
                    flush=True,
                )
    write_csv(out / "study.csv", rows)
    summary = summarise(rows)
    tuning = "validation" if "validation" in sides else sides[0]
    chosen = choose([s for s in summary if (s["sampler"], s["side"]) == ("ddim", tuning)], shown)
    report = markdown(summary, sizes)
    report += (
        f"\nChosen by the rule on the {tuning} cases ({draws} draws of the samples averaged): "
        f"{chosen['model']}, {chosen['sampler']} "
        f"{chosen['steps']} steps, eta {chosen['eta']}, {chosen['samples']} samples "
        f"(Dice {chosen['dice']:.3f}, AUROC {chosen['auroc']:.3f}).\n"
    )
    write_text(out / "study.md", report)
    for side in sides:
        plot([s for s in summary if s["side"] == side], out, side)
    print(report)
    return chosen


if __name__ == "__main__":
    run_cli(study)
