"""Segment one case given its four files, with the bundle's inference config.

    python -m scripts.segment --t1 a.nii.gz --t1ce b.nii.gz --t2 c.nii.gz --flair d.nii.gz \
        --output_dir out [--num_samples 5 --ckpt_path models/model.pt --sampling_steps 5 ...]

The files may be named anything (3D Slicer exports, scanner conversions); the outputs are those
of `monai.bundle run inference` (`bundle.io.outputs.OUTPUT_NAMES`: mean, segmentation, variance
NIfTI, the Slicer .seg.nrrd and a quick-look PNG), named after the t1 file, and replace those of
an earlier run. Any other inference.yaml key is an override (a misspelled one is an error). A
missing or unusable file, or an output folder that holds one of the four files, ends the command
with one line naming it and exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import monai.bundle

from bundle.data.layouts import DEFAULT_LAYOUT, MODALITIES, case_id_from_path
from bundle.data.validation import validate_case
from bundle.io.outputs import check_output_folder
from bundle.workflow.options import run_cli

REPO = Path(__file__).resolve().parents[1]


def segment(
    t1: str,
    t1ce: str,
    t2: str,
    flair: str,
    output_dir: str,
    num_samples: int = 5,
    ckpt_path: str = str(REPO / "models" / "model.pt"),
    **overrides: object,
) -> dict:
    """Run configs/inference.yaml on the one case; returns its datalist entry."""
    files = dict(zip(MODALITIES, (t1, t1ce, t2, flair), strict=True))
    case = {
        "case_id": case_id_from_path(t1),
        "layout": DEFAULT_LAYOUT,
        "image": [str(Path(files[m]).resolve()) for m in MODALITIES],
        "channel_order": list(range(len(MODALITIES))),
    }
    validate_case(case)  # DatasetError naming the file, before any model is built
    check_output_folder(output_dir, [case])
    overrides.setdefault("overwrite", True)  # an earlier run's outputs of the case are replaced
    monai.bundle.run(
        "inference",
        config_file=str(REPO / "configs" / "inference.yaml"),
        bundle_root=str(REPO),
        output_dir=str(output_dir),
        num_samples=num_samples,
        ckpt_path=str(ckpt_path),
        datalist=[case],  # this case only
        **overrides,
    )
    return case


if __name__ == "__main__":
    run_cli(segment)
