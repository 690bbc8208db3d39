"""Check a case's files before any work, so that bad input fails early with a clear message.

Every error is one line that names the case and the file, and says what is wrong with it.

One geometry rule holds everywhere (validation, training and inference's loading, evaluation,
the written outputs): a file's voxel-to-world affine is nibabel's ``image.affine``, NIfTI's own
order of precedence: the sform when its code is set, else the qform when its code is set, else
pixdim alone. MONAI's ``NibabelReader`` would "correct" a header whose fields disagree by
preferring whichever matches pixdim (a 1 mm sform with a 2 mm pixdim loads at 2 mm, and every
output comes out at 2 mm), so the pipelines load with :class:`bundle.data.transforms.NiftiReader`
instead. A header whose fields disagree is used, with a warning naming the file
(:func:`header_disagreements`): such files are common (registration tools rewrite the sform
alone) and the rule is the standard's, so refusing them would refuse good data.
"""

from __future__ import annotations

import logging
import math
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
from bundle.workflow.options import flag

AFFINE_ATOL_MM = 1e-3
"""A label (or prediction) shares its image's geometry when their affines agree to this many
millimetres; the modalities themselves must agree as closely as MONAI requires to stack them."""

FLOAT32_MAX = float(np.finfo(np.float32).max)
"""The pipeline computes in float32: larger voxel values would turn into Inf."""

CASE_KEYS: tuple[str, ...] = ("case_id", "layout", "image")

MIN_VOXELS_PER_AXIS = 8
"""Fewer voxels than this along any axis is a slab or a single slice, not a brain volume (no
brain MR is under 8 slices even at 1 cm): refused before any work rather than written as 2-D
outputs."""

MAX_VOXELS = 512**3
"""The most voxels the bundle reads per volume (512 MB as float32): a header declaring more is
taken for a broken or hostile one, before any memory is allocated for it."""

MAX_DEFLATE_RATIO = 1032
"""Deflate (gzip) compresses at most about 1032:1, so a ``.nii.gz`` of n bytes holds at most
1032 n bytes of voxels: a header declaring more describes data the file cannot hold."""

logger = logging.getLogger(__name__)


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
    _check_declared_size(image, path, case_id)
    return image


def _check_declared_size(image: nib.Nifti1Image, path: Path, case_id: str) -> None:
    """Refuse a header that declares more voxels than the bundle reads, or than the file can
    hold, before the voxels are read (a 96-byte file declaring 2000 x 2000 x 1000 voxels would
    otherwise have 16 GB allocated for it)."""
    voxels = math.prod(int(n) for n in image.shape)
    shape = " x ".join(str(n) for n in image.shape)
    if voxels > MAX_VOXELS:
        raise DatasetError(
            f"case {case_id}: file {path} declares {shape} voxels ({voxels:.3g}), more than the "
            f"{MAX_VOXELS:.3g} the bundle reads (check the header's dim)"
        )
    declared = voxels * image.get_data_dtype().itemsize
    size = path.stat().st_size
    offset = int(image.header.get("vox_offset", 0))
    compressed = path.name.endswith(".gz")
    room = size * MAX_DEFLATE_RATIO if compressed else size - offset
    if declared > room:
        holds = f"{room:.3g} bytes (compressed: {size:.3g})" if compressed else f"{room} bytes"
        raise DatasetError(
            f"case {case_id}: file {path} declares {shape} voxels ({declared:.3g} bytes) but can "
            f"hold at most {holds}: the header's dim is wrong or the file is cut short"
        )


def affine_source(image: nib.Nifti1Image) -> str:
    """The header field that gives a file's affine under the bundle's rule (``image.affine``)."""
    header = image.header
    return "sform" if header["sform_code"] else "qform" if header["qform_code"] else "pixdim"


def header_disagreements(image: nib.Nifti1Image) -> list[str]:
    """How a NIfTI header's geometry fields disagree with the affine the bundle uses
    (``image.affine``, see the module's docstring): sform against qform, pixdim against the
    affine's voxel sizes, or no sform or qform at all; empty for a consistent header."""
    header = image.header
    sform, sform_code = header.get_sform(coded=True)
    qform, qform_code = header.get_qform(coded=True)
    found = []
    if not sform_code and not qform_code:
        found.append("neither sform nor qform is set, so its orientation is a guess")
    if sform_code and qform_code:
        difference = float(np.abs(sform - qform).max())
        if difference > AFFINE_ATOL_MM:
            found.append(f"its sform and qform differ by {difference:.3g} mm")
    pixdim = np.asarray(header.get_zooms()[:3], dtype=float)
    sizes = nib.affines.voxel_sizes(image.affine)[:3]
    if not np.allclose(pixdim, sizes, rtol=0, atol=AFFINE_ATOL_MM):
        found.append(
            f"its pixdim says {_mm(pixdim)} mm voxels, its {affine_source(image)} {_mm(sizes)} mm"
        )
    return found


def _mm(sizes: np.ndarray) -> str:
    return " x ".join(f"{s:.3g}" for s in sizes)


def warn_inconsistent_header(image: nib.Nifti1Image, path: Path, case_id: str) -> None:
    """One warning line naming the file if its header's geometry fields disagree."""
    found = header_disagreements(image)
    if found:
        logger.warning(
            f"case {case_id}: file {path} has an inconsistent header: {'; '.join(found)}; "
            f"its {affine_source(image)} is used (NIfTI's order: sform, qform, pixdim)"
        )


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


def _check_extent(case_id: str, path: Path, image: nib.Nifti1Image) -> None:
    """Refuse a single slice or a slab: too few voxels along an axis to be a brain volume."""
    if min(image.shape[:3]) < MIN_VOXELS_PER_AXIS:
        raise DatasetError(
            f"case {case_id}: file {path} has shape {image.shape}: too thin for a brain volume "
            f"(at least {MIN_VOXELS_PER_AXIS} voxels along each axis)"
        )


def _check_not_constant(case_id: str, path: Path, data: np.ndarray, channels: bool) -> None:
    """Refuse a modality (a channel of a 4-D file) whose voxels all hold one value: it carries
    no image (a blank export, a failed conversion) and its normalisation would divide by 0."""
    flat = data.reshape(-1, data.shape[3] if channels else 1)
    low, high = flat.min(0), flat.max(0)
    constant = [c for c in range(flat.shape[1]) if low[c] == high[c]]
    if constant:
        where = f"channel(s) {constant} of " if channels else ""
        raise DatasetError(
            f"case {case_id}: {where}file {path} holds one value, {float(low[constant[0]]):g}, "
            "in every voxel (an empty modality)"
        )


def validate_case(case: dict, read_data: bool = True) -> None:
    """Raise DatasetError if a datalist entry's files cannot make a 4-channel case.

    Checks the entry's keys, that files exist and load with integer or real voxels, that the
    image is 3-D per modality (or one 4-D file of four channels) with no other file of the case
    beside it, at least :data:`MIN_VOXELS_PER_AXIS` along each axis, that every file shares one
    shape and affine, and that label values belong to the layout; headers declaring more voxels
    than the file can hold are refused unread, and inconsistent ones named in a warning.
    ``read_data`` also reads every voxel, which finds truncated files, NaN/Inf values, values
    beyond float32 and empty (constant) modalities.
    """
    read_data = flag(read_data, "validate_voxels")
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
    _check_extent(case_id, paths[0], images[0])
    for path, image in zip(paths[1:], images[1:], strict=True):
        check_geometry(case_id, path, image, paths[0], images[0], stacked=True)
    for path, image in zip(paths, images, strict=True):
        warn_inconsistent_header(image, path, case_id)
    if read_data:
        for path, image in zip(paths, images, strict=True):
            _check_not_constant(case_id, path, read_voxels(image, path, case_id), len(paths) == 1)
    if "label" in case:
        label_path = Path(case["label"])
        label = load_nifti(label_path, case_id)
        if len(label.shape) != 3:
            raise DatasetError(
                f"case {case_id}: file {label_path} has shape {label.shape}, "
                "expected a 3-D labelmap"
            )
        check_geometry(case_id, label_path, label, paths[0], images[0])
        warn_inconsistent_header(label, label_path, case_id)
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
