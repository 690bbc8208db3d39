"""Summarise training runs from their TensorBoard logs as a markdown table.

    python -m scripts.training_summary --output docs/training_log.md \
        --runs "{'diffusion': 'runs', 'U-Net': 'runs/baseline_unet'}"

Per run: iterations, wall time, first/last training loss (mean of 50 iterations), and every
validation (epoch, Dice of the validation ensemble and of its samples each alone, variance ratio
wrong/right voxels).
"""

from __future__ import annotations

import math
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bundle.io.atomic import write_text
from bundle.workflow.options import run_cli


def scalars(log_dir: str | Path, tag: str) -> list:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return events.Scalars(tag) if tag in events.Tags()["scalars"] else []


def summarise(name: str, log_dir: str | Path) -> str:
    loss = scalars(log_dir, "train_loss")
    dice = scalars(log_dir, "val_mean_dice")
    ratio = {e.step: e.value for e in scalars(log_dir, "val_variance_error_ratio")}
    single = {e.step: e.value for e in scalars(log_dir, "val_sample_dice")}
    if not loss:
        return f"### {name}\n\nno training loss logged in {log_dir}\n"
    window = min(50, len(loss))
    first = sum(e.value for e in loss[:window]) / window
    last = sum(e.value for e in loss[-window:]) / window
    minutes = (loss[-1].wall_time - loss[0].wall_time) / 60
    lines = [
        f"### {name}",
        "",
        f"{len(loss)} iterations in {minutes:.1f} min; training loss {first:.4f} (first "
        f"{window}) -> {last:.4f} (last {window}).",
        "",
        "| epoch | validation Dice | one sample's Dice | variance ratio (wrong / right voxels) |",
        "|---|---|---|---|",
    ]
    for e in dice:
        r, one = ratio.get(e.step, math.nan), single.get(e.step, math.nan)
        lines.append(
            f"| {e.step} | {e.value:.4f} | {'-' if math.isnan(one) else f'{one:.4f}'} "
            f"| {'-' if math.isnan(r) else f'{r:.1f}'} |"
        )
    best = max(dice, key=lambda e: e.value) if dice else None
    if best:
        lines += ["", f"Best validation Dice {best.value:.4f} at epoch {best.step}."]
    return "\n".join(lines) + "\n"


def training_summary(runs: dict[str, str], output: str | None = None) -> str:
    """One section per run (name -> TensorBoard log folder)."""
    text = "\n".join(summarise(name, log_dir) for name, log_dir in runs.items())
    print(text)
    if output:
        write_text(output, text)
    return text


if __name__ == "__main__":
    run_cli(training_summary)
