"""Check a case's files before any work, so that bad input fails early with a clear message.

Every error is one line that names the case and the file, and says what is wrong with it.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from bundle.data.layouts import (
    LABEL_SUFFIX,
    LAYOUTS,
    MODALITIES,
    NIFTI_SUFFIXES,
    SEPARATE_FILE_LAYOUTS,
    DatasetError,
    reason,
)

AFFINE_ATOL_MM = 1e-3
"""A label (or prediction) shares its image's geometry when their affines agree to this many
millimetres; the modalities themselves must agree as closely as MONAI requires to stack them."""

FLOAT32_MAX = float(np.finfo(np.float32).max)
"""The pipeline computes in float32: larger voxel values would turn into Inf."""

CASE_KEYS: tuple[str, ...] = ("case_id", "layout", "image")


def load_nifti(path: Path, case_id: str) -> nib.Nifti1Image:
    """The NIfTI header of a case's file, with a clear error if it is missing or unreadable, or
    stores voxels the pipeline cannot compute with (complex, RGB, ...)."""
    if not path.is_file():
        raise DatasetError(f"case {case_id}: file {path} is missing")
    try:
        image = nib.load(str(path))
        dtype = image.get_data_dtype()
    except Exception as err:  # nibabel raises many types for a broken header
        raise DatasetError(
            f"case {case_id}: file {path} is not a readable NIfTI ({reason(err)})"
        ) from err
    if dtype.kind not in "iuf":
        raise DatasetError(
            f"case {case_id}: file {path} stores {dtype} voxels; expected integer or real values"
        )
    return image


def read_voxels(image: nib.Nifti1Image, path: Path, case_id: str) -> np.ndarray:
    """Every voxel of a file (scaled as the header says), with a clear error if the data block is
    truncated or the values are NaN, Inf or beyond float32."""
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as err:  # truncated gzip, short data block, ...
        raise DatasetError(f"case {case_id}: file {path} cannot be read ({reason(err)})") from err
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all():
            raise DatasetError(f"case {case_id}: file {path} contains NaN or Inf voxels")
        peak = float(np.abs(data).max(initial=0.0))
        if peak > FLOAT32_MAX:
            raise DatasetError(
                f"case {case_id}: file {path} has values up to {peak:.3g}, beyond float32's "
                f"{FLOAT32_MAX:.3g} (check the header's scl_slope)"
            )
    return data


def check_geometry(
    case_id: str,
    path: Path,
    image: nib.Nifti1Image,
    ref_path: Path,
    ref: nib.Nifti1Image,
    stacked: bool = False,
) -> None:
    """Raise DatasetError unless ``image`` has the shape and affine of ``ref`` (3-D part): to
    within AFFINE_ATOL_MM, or, for modalities MONAI's LoadImaged stacks into one image
    (``stacked``), to within np.allclose's defaults, which it requires."""
    shape, ref_shape = image.shape[:3], ref.shape[:3]
    ref_name = ref_path.name if ref_path.parent == path.parent else ref_path
    if shape != ref_shape:
        raise DatasetError(
            f"case {case_id}: file {path} has shape {shape}, but {ref_name} has {ref_shape}"
        )
    difference = float(np.abs(image.affine - ref.affine).max())
    if stacked:
        close, allowed = np.allclose(image.affine, ref.affine), "MONAI stacks (np.allclose)"
    else:
        close, allowed = difference <= AFFINE_ATOL_MM, f"{AFFINE_ATOL_MM} mm"
    if not close:  # also refuses a NaN affine
        raise DatasetError(
            f"case {case_id}: file {path} has an affine that differs from {ref_name} by "
            f"{difference:.3g} mm, more than {allowed}"
        )


def _check_entry(case: dict) -> None:
    missing = [key for key in CASE_KEYS if key not in case]
    if missing:
        raise DatasetError(
            f"case {case.get('case_id', '?')}: datalist entry has no {', '.join(missing)} "
            f"(it has {', '.join(sorted(case))})"
        )
    if case["layout"] not in LAYOUTS:
        raise DatasetError(
            f"case {case['case_id']}: unknown layout {case['layout']!r}; known: "
            f"{', '.join(LAYOUTS)}"
        )


def _check_no_extra_files(case: dict, paths: list[Path]) -> None:
    """A separate-file case folder holds its four modalities and label and no other NIfTI of the
    case: an extra one (a fifth sequence, a t1.nii beside a t1.nii.gz) would be silently unused."""
    layout = LAYOUTS[case["layout"]]
    if layout not in SEPARATE_FILE_LAYOUTS:
        return
    case_id = case["case_id"]
    folder = paths[0].parent
    prefix = f"{case_id}{layout.separator}"
    known = {p.name for p in paths} | {f"{prefix}{LABEL_SUFFIX}{ext}" for ext in NIFTI_SUFFIXES}
    if "label" in case:
        known.add(Path(case["label"]).name)
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if (
            path.name.startswith(prefix)
            and path.name.endswith(NIFTI_SUFFIXES)
            and path.name not in known
        ):
            raise DatasetError(
                f"case {case_id}: unexpected file {path}; a {layout.name} case has only the "
                f"files {', '.join(f'{prefix}{s}' for s in layout.modality_files)} and "
                f"{prefix}{LABEL_SUFFIX} (.nii.gz or .nii), one of each"
            )


def validate_case(case: dict, read_data: bool = True) -> None:
    """Raise DatasetError if a datalist entry's files cannot make a 4-channel case.

    Checks the entry's keys, that files exist and load with integer or real voxels, that the
    image is 3-D per modality (or one 4-D file of four channels) with no other file of the case
    beside it, that every file shares one shape and affine, and that label values belong to the
    layout. ``read_data`` also reads every voxel, which finds truncated files, NaN/Inf values,
    values beyond float32 and empty (all-zero) modalities.
    """
    _check_entry(case)
    case_id = case["case_id"]
    layout = LAYOUTS[case["layout"]]
    paths = [Path(p) for p in np.atleast_1d(case["image"])]
    images = [load_nifti(p, case_id) for p in paths]
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
    _check_no_extra_files(case, paths)
    for path, image in zip(paths[1:], images[1:], strict=True):
        check_geometry(case_id, path, image, paths[0], images[0], stacked=True)
    if read_data:
        for path, image in zip(paths, images, strict=True):
            data = read_voxels(image, path, case_id).reshape(*image.shape[:3], -1)
            empty = [c for c in range(data.shape[-1]) if not data[..., c].any()]
            if empty:
                where = f"channel(s) {empty} of " if len(paths) == 1 else ""
                raise DatasetError(
                    f"case {case_id}: {where}file {path} is all zeros (an empty modality)"
                )
    if "label" in case:
        label_path = Path(case["label"])
        label = load_nifti(label_path, case_id)
        if len(label.shape) != 3:
            raise DatasetError(
                f"case {case_id}: file {label_path} has shape {label.shape}, "
                "expected a 3-D labelmap"
            )
        check_geometry(case_id, label_path, label, paths[0], images[0])
        values = np.unique(read_voxels(label, label_path, case_id))
        unexpected = sorted(set(values.tolist()) - set(layout.label_values))
        if unexpected:
            shown = ", ".join(f"{v:g}" for v in unexpected[:5]) + (
                f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
            )
            raise DatasetError(
                f"case {case_id}: file {label_path} has label values [{shown}] outside the "
                f"{layout.name} set {list(layout.label_values)}"
            )
