"""Write cases as MONAI Label takes them: one 4-D NIfTI per case, channels t1, t1ce, t2, flair.

    python -m scripts.stack_modalities --dataset_dir D --output_dir studies [--labels true]

MONAI Label's datastore hands the bundle one image file per case, so the four modalities must be
one 4-D file, in the channel order the metadata's ``channel_def`` states (``MODALITIES``). Every
case of D, in any layout the bundle reads (BraTS 2020/2021 and 2023 case folders, or MSD Task01,
whose 4-D files are reordered), is validated first (files, shapes, affines, voxels) and written
to ``output_dir/<case>.nii.gz`` with the first modality's affine. Its label, renumbered to BraTS
2020/2021's values (1 necrosis, 2 edema, 4 enhancing: what the bundle assumes for MONAI Label's
cases), goes to ``output_dir/labels/final/<case>.nii.gz``, MONAI Label's folder of finished
labels. Files are written atomically (complete or not at all) and replaced if they exist. A bad
case ends the command with one line naming the file and exit code 2, before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from bundle.data.layouts import DEFAULT_LAYOUT, LAYOUTS, MODALITIES, SUB_REGIONS, find_cases
from bundle.data.validation import validate_case
from bundle.io.atomic import atomic_path
from bundle.workflow.options import flag, run_cli

LABELS_FOLDER = Path("labels") / "final"
"""Where MONAI Label's local datastore keeps the finished label of ``<image>`` (same name)."""


def _save(image: nib.Nifti1Image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return path


def _like(data: np.ndarray, reference: nib.Nifti1Image) -> nib.Nifti1Image:
    """A NIfTI of ``data`` in ``reference``'s geometry: its affine, qform/sform codes, units."""
    image = nib.Nifti1Image(data, reference.affine)
    header = reference.header
    image.set_qform(reference.affine, code=int(header["qform_code"]))
    image.set_sform(reference.affine, code=int(header["sform_code"]))
    image.header.set_xyzt_units(*header.get_xyzt_units())
    return image


def stacked_image(case: dict) -> nib.Nifti1Image:
    """The case's image as one 4-D NIfTI, channels in ``MODALITIES`` order (a validated case)."""
    paths = np.atleast_1d(case["image"])
    images = [nib.load(str(p)) for p in paths]
    if len(images) == 1:  # one 4-D file: its channel c holds modality channel_order[c]
        volumes = np.asanyarray(images[0].dataobj)
        channels = [volumes[..., c] for c in case["channel_order"]]
    else:
        channels = [np.asanyarray(image.dataobj) for image in images]
    return _like(np.stack(channels, axis=-1), images[0])


def renumbered_label(case: dict, reference: nib.Nifti1Image) -> nib.Nifti1Image:
    """The case's label in the default layout's numbering, uint8, in the image's geometry."""
    layout, target = LAYOUTS[case["layout"]], LAYOUTS[DEFAULT_LAYOUT]
    label = np.asanyarray(nib.load(case["label"]).dataobj)
    renumbered = np.zeros(label.shape, np.uint8)
    for region in SUB_REGIONS:
        renumbered[label == layout.label(region)] = target.label(region)
    return _like(renumbered, reference)


def stack_modalities(dataset_dir: str, output_dir: str, labels: bool | str = True) -> list[Path]:
    """Write every case of ``dataset_dir`` (and, with ``labels``, its label) into
    ``output_dir``; returns the image files written."""
    cases = find_cases(dataset_dir)
    for case in cases:  # all of them before any file is written
        validate_case(case)
    out = Path(output_dir)
    written = []
    for case in cases:
        image = stacked_image(case)
        written.append(_save(image, out / f"{case['case_id']}.nii.gz"))
        if flag(labels) and "label" in case:
            _save(renumbered_label(case, image), out / LABELS_FOLDER / written[-1].name)
        print(f"{case['case_id']}: {written[-1]} ({', '.join(MODALITIES)})", flush=True)
    return written


if __name__ == "__main__":
    run_cli(stack_modalities)
