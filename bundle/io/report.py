"""Per-case summary line and quick-look PNG of an inference run: people look before they read."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from ignite.engine import Engine, Events  # noqa: E402

from bundle.data.layouts import DEFAULT_LAYOUT, MODALITIES, case_id_from_path  # noqa: E402
from bundle.data.regions import region_channel, region_values  # noqa: E402
from bundle.evaluation.metrics import expected_dice_gap, overlap  # noqa: E402
from bundle.io.atomic import atomic_path  # noqa: E402
from bundle.io.outputs import output_path  # noqa: E402
from bundle.workflow.options import flag  # noqa: E402

logger = logging.getLogger(__name__)


def _canonical(path: Path, channel: int | None = None) -> np.ndarray:
    image = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asanyarray(image.dataobj, dtype=np.float32)
    return data[..., channel] if channel is not None else data


def write_quicklook(
    case: dict, output_dir: str | Path, regions: str | Sequence[str] = "wt", note: str = ""
) -> Path:
    """FLAIR with the segmentation outline, the whole tumour's mean and variance, on the axial
    slice (RAS) with the most tumour, read back from the written files (maps of ``regions``);
    ``note`` follows the case id in the title (the uncertainty score and any review flag)."""
    case_id = case["case_id"]
    png = output_path(output_dir, case_id, "quicklook")
    images = case["image"]
    flair_index = MODALITIES.index("flair")
    if isinstance(images, str):  # one 4-D file: FLAIR is the stored channel channel_order[flair]
        flair = _canonical(Path(images), int(case["channel_order"][flair_index]))
    else:
        flair = _canonical(Path(images[flair_index]))
    seg = _canonical(output_path(output_dir, case_id, "pred")) > 0
    # per-region maps (X, Y, Z, C): the whole tumour's is shown
    wt = region_channel(regions, "wt")
    mean, var = (
        _canonical(output_path(output_dir, case_id, k)).reshape(*seg.shape, -1)[..., wt]
        for k in ("mean", "variance")
    )
    per_slice = seg.reshape(-1, seg.shape[2]).sum(0)
    z = int(per_slice.argmax()) if per_slice.max() > 0 else int(np.argmax((flair > 0).sum((0, 1))))
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    view = [np.rot90(a[:, :, z]) for a in (flair, seg, mean, var)]
    axes[0].imshow(view[0], cmap="gray")
    if view[1].any():
        axes[0].contour(view[1], levels=[0.5], colors="red", linewidths=1)
    axes[0].set_title(f"FLAIR + segmentation, slice {z}")
    shown = axes[1].imshow(view[2], cmap="magma", vmin=0, vmax=1)
    axes[1].set_title("ensemble mean (whole tumour)")
    fig.colorbar(shown, ax=axes[1], fraction=0.046)
    # scaled to this slice: a confident model's variance is small, and must still show up
    peak = max(float(view[3].max()), 1e-6)
    shown = axes[2].imshow(view[3], cmap="viridis", vmin=0, vmax=peak)
    axes[2].set_title(f"variance (uncertainty), max {peak:.3g}")
    fig.colorbar(shown, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"{case_id}{note}")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return png


def case_summary(
    seg: np.ndarray, variance: np.ndarray, votes: np.ndarray, voxel_ml: float
) -> dict[str, float]:
    """Tumour volume (ml), mean variance inside the predicted tumour and the case's uncertainty
    score (:func:`bundle.evaluation.metrics.expected_dice_gap` of the whole-tumour votes)."""
    tumour = seg > 0
    return {
        "tumour_ml": float(tumour.sum() * voxel_ml),
        "variance_in_tumour": float(variance[tumour].mean()) if tumour.any() else 0.0,
        "uncertainty": expected_dice_gap(votes),
    }


def whole_tumour_dice(seg: np.ndarray, case: dict) -> float | None:
    """Dice of a segmentation (voxels > 0, the input's voxel grid) against the case's expert
    label as whole tumour, or None for a case without a label."""
    if "label" not in case:
        return None
    label = np.asanyarray(nib.load(case["label"]).dataobj)
    truth = np.isin(label, region_values(case.get("layout", DEFAULT_LAYOUT), "wt"))
    return overlap(seg.reshape(truth.shape) > 0, truth)[0]


class CaseSummary:
    """Evaluator handler: one line per case (whole-tumour volume, its mean variance, the case's
    uncertainty score and whether it exceeds the review threshold, its whole-tumour Dice when it
    has a label, seconds) and its quick-look PNG, whose title carries the score and the flag.

    Args:
        output_dir: the inference run's output folder (the quick-looks go there too).
        datalist: the cases of the run, by ``case_id``.
        review_threshold: a case whose uncertainty score exceeds it is flagged for review
            (``review_threshold`` in inference.yaml).
        regions: the mask channels of the run's maps (``region_names``).
        quicklook: write the PNG.
    """

    def __init__(
        self,
        output_dir: str,
        datalist: list[dict],
        review_threshold: float,
        regions: str | Sequence[str] = "wt",
        quicklook: bool = True,
    ) -> None:
        self.output_dir = output_dir
        self.cases = {case["case_id"]: case for case in datalist}
        self.regions = regions
        self.quicklook = flag(quicklook)
        self.review_threshold = float(review_threshold)
        self._start = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        self._start = time.perf_counter()

    def _completed(self, engine: Engine) -> None:
        for item in engine.state.output:
            seg = item["pred"]
            case_id = case_id_from_path(seg.meta["filename_or_obj"])
            voxel_ml = float(np.prod(np.asarray(seg.pixdim[:3]))) / 1000.0
            # the whole tumour: any label, and its mean and variance channel
            wt = region_channel(self.regions, "wt")
            segmentation = seg.cpu().numpy()
            stats = case_summary(
                segmentation,
                *(item[k][wt : wt + 1].cpu().numpy() for k in ("variance", "votes")),
                voxel_ml,
            )
            score = f"uncertainty {stats['uncertainty']:.3f}"
            if stats["uncertainty"] > self.review_threshold:
                score += f" (above {self.review_threshold:g}: flagged for review)"
            if self.quicklook:
                write_quicklook(self.cases[case_id], self.output_dir, self.regions, f", {score}")
            dice = whole_tumour_dice(segmentation, self.cases[case_id])
            scored = "" if dice is None else f", whole-tumour Dice {dice:.3f} against its label"
            logger.info(
                f"{case_id}: tumour {stats['tumour_ml']:.1f} ml, mean variance in tumour "
                f"{stats['variance_in_tumour']:.4f}, {score}"
                f"{scored}, {time.perf_counter() - self._start:.1f} s"
            )
