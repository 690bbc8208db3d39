"""Check a case's files before any work, so that bad input fails early with a clear message.

Every error names the case and the file, and says what is wrong with it.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from bundle.layouts import LAYOUTS, MODALITIES, DatasetError

AFFINE_ATOL_MM = 1e-3
"""Two files share a geometry when their affines agree to this many millimetres."""


def _load(path: Path, case_id: str) -> nib.Nifti1Image:
    if not path.is_file():
        raise DatasetError(f"case {case_id}: file {path} is missing")
    try:
        return nib.load(str(path))
    except Exception as err:  # nibabel raises many types for a broken header
        raise DatasetError(f"case {case_id}: file {path} is not a readable NIfTI ({err})") from err


def _read(image: nib.Nifti1Image, path: Path, case_id: str) -> np.ndarray:
    try:
        return np.asanyarray(image.dataobj)
    except Exception as err:  # truncated gzip, short data block, ...
        raise DatasetError(f"case {case_id}: file {path} cannot be read ({err})") from err


def _check_geometry(
    case_id: str, path: Path, image: nib.Nifti1Image, ref_path: Path, ref: nib.Nifti1Image
) -> None:
    shape, ref_shape = image.shape[:3], ref.shape[:3]
    if shape != ref_shape:
        raise DatasetError(
            f"case {case_id}: file {path} has shape {shape}, but {ref_path.name} has {ref_shape}"
        )
    if not np.allclose(image.affine, ref.affine, atol=AFFINE_ATOL_MM):
        raise DatasetError(
            f"case {case_id}: file {path} has an affine that differs from {ref_path.name} by "
            f"more than {AFFINE_ATOL_MM} mm:\n{image.affine}\nvs\n{ref.affine}"
        )


def validate_case(case: dict, read_data: bool = True) -> None:
    """Raise DatasetError if a datalist entry's files cannot make a 4-channel case.

    Checks that files exist and load, that the image is 3-D per modality (or one 4-D file of four
    channels), that every file shares one shape and affine, and that label values belong to the
    layout. ``read_data`` also reads every voxel, which finds truncated files and NaN/Inf values.
    """
    case_id = case["case_id"]
    layout = LAYOUTS[case["layout"]]
    paths = [Path(p) for p in np.atleast_1d(case["image"])]
    images = [_load(p, case_id) for p in paths]
    if len(paths) == 1:
        if len(images[0].shape) != 4 or images[0].shape[3] != len(MODALITIES):
            raise DatasetError(
                f"case {case_id}: file {paths[0]} has shape {images[0].shape}, expected a 4-D "
                f"image with {len(MODALITIES)} channels"
            )
    else:
        if len(paths) != len(MODALITIES):
            raise DatasetError(
                f"case {case_id}: {len(paths)} image files, expected {len(MODALITIES)}"
            )
        for path, image in zip(paths, images, strict=True):
            if len(image.shape) != 3:
                raise DatasetError(
                    f"case {case_id}: file {path} has shape {image.shape}, expected a 3-D volume"
                )
    for path, image in zip(paths[1:], images[1:], strict=True):
        _check_geometry(case_id, path, image, paths[0], images[0])
    if read_data:
        for path, image in zip(paths, images, strict=True):
            data = _read(image, path, case_id)
            if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
                raise DatasetError(f"case {case_id}: file {path} contains NaN or Inf voxels")
    if "label" in case:
        label_path = Path(case["label"])
        label = _load(label_path, case_id)
        if len(label.shape) != 3:
            raise DatasetError(
                f"case {case_id}: file {label_path} has shape {label.shape}, "
                "expected a 3-D labelmap"
            )
        _check_geometry(case_id, label_path, label, paths[0], images[0])
        values = np.unique(_read(label, label_path, case_id))
        unexpected = sorted(set(values.tolist()) - set(layout.label_values))
        if unexpected:
            raise DatasetError(
                f"case {case_id}: file {label_path} has label values {unexpected} outside the "
                f"{layout.name} set {list(layout.label_values)}"
            )
