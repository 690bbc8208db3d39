"""Synthetic BraTS-like cases for demos and tests: no download, seeded, a few seconds a case.

Each case is a skull-stripped brain (lobed surface, cortex ribbon folded around sulci, white
matter, ventricles, deep grey matter, interhemispheric fissure) with, in most cases, a glioma-like
tumour whose necrotic core, enhancing rim and oedema have the contrast they have on real T1, T1ce,
T2 and FLAIR. Bias field, Rician noise, per-case intensity scales and FLAIR-bright non-tumour
lesions keep simple intensity thresholds from solving the task, so a model must read the images.

Cases are written in any layout of :mod:`bundle.data.layouts` (``scripts/make_demo_data.py`` is
the command line).
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from bundle.data.layouts import LABEL_SUFFIX, LAYOUTS, MODALITIES, MSD, SUB_REGIONS, Layout
from bundle.io.atomic import atomic_path

FULL_SHAPE: tuple[int, int, int] = (240, 240, 155)
"""BraTS's 1 mm grid; other shapes get a proportionally scaled brain."""

CASE_NAMES: dict[str, str] = {
    "brats2020": "BraTS20_Training_{:03d}",
    "brats2023": "BraTS-GLI-{:05d}-000",
    "msd": "BRATS_{:03d}",
}
"""Case ids as each release names them; a layout without an entry gets ``case_{:03d}``."""

# Tissue classes of the synthetic anatomy; only the tumour ones reach the region map.
BACKGROUND, CSF, GREY, WHITE, DEEP_GREY, VESSEL, WMH, OEDEMA, NECROSIS, ENHANCING = range(10)
TUMOUR_CLASSES = {"necrosis": NECROSIS, "edema": OEDEMA, "enhancing": ENHANCING}
REGION_OF_CLASS = np.zeros(10, np.uint8)
REGION_OF_CLASS[[TUMOUR_CLASSES[r] for r in SUB_REGIONS]] = np.arange(1, len(SUB_REGIONS) + 1)

# Mean intensity of each tissue class per modality (t1, t1ce, t2, flair), white matter on T1 ~ 1.
# From the usual appearance: T1 WM > GM > CSF; T2 CSF bright, WM dark; FLAIR CSF suppressed;
# vessels, choroid plexus and enhancing tumour bright on T1ce; oedema bright on T2 and FLAIR.
CONTRAST = np.array(
    [
        [0.00, 0.00, 0.00, 0.00],  # background
        [0.30, 0.28, 1.00, 0.12],  # CSF
        [0.62, 0.62, 0.60, 0.62],  # grey matter
        [0.88, 0.86, 0.40, 0.45],  # white matter
        [0.72, 0.72, 0.50, 0.54],  # deep grey matter
        [0.55, 1.25, 0.25, 0.30],  # vessels, choroid plexus
        [0.74, 0.72, 0.80, 0.92],  # white-matter hyperintensity (not tumour)
        [0.66, 0.64, 0.85, 0.92],  # oedema
        [0.32, 0.30, 0.95, 0.55],  # necrosis / non-enhancing core
        [0.62, 1.25, 0.70, 0.75],  # enhancing tumour
    ],
    np.float32,
)
# Relative amplitude of the smooth texture per class: tumour tissue is more heterogeneous.
TEXTURE = np.array([0, 0.04, 0.04, 0.03, 0.04, 0.08, 0.06, 0.10, 0.12, 0.12], np.float32)


def brats_affine(shape: Sequence[int] = FULL_SHAPE) -> np.ndarray:
    """The affine of real BraTS files (x and y flipped, not RAS), so readers cannot assume RAS."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = shape[1] - 1
    return affine


def _coarse_factor(sigma: float) -> int:
    """Grid step for noise correlated over ``sigma`` voxels: >= 1.5 steps per sigma stay smooth."""
    return max(1, int(sigma / 1.5))


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma: float) -> np.ndarray:
    """Unit-variance noise correlated over ``sigma`` voxels, filtered on a coarse grid and then
    interpolated: filtering at full resolution would cost ten times more."""
    factor = _coarse_factor(sigma)
    coarse_shape = [-(-(int(n) - 1) // factor) + 1 for n in shape]
    noise = ndimage.gaussian_filter(
        rng.standard_normal(coarse_shape, dtype=np.float32), sigma / factor, mode="wrap"
    )
    noise = (noise - noise.mean()) / (noise.std() + 1e-8)
    if factor > 1:
        noise = ndimage.zoom(
            noise, [n / c for n, c in zip(shape, coarse_shape, strict=True)], order=1
        )
    return noise


def _ellipsoid_radius(
    axes: Sequence[np.ndarray], centre: Sequence[float], semi: Sequence[float]
) -> np.ndarray:
    """Normalised radius of an axis-aligned ellipsoid on a grid given by 1-D coordinates."""
    x, y, z = (((a - c) / s) ** 2 for a, c, s in zip(axes, centre, semi, strict=True))
    return np.sqrt(x[:, None, None] + (y[:, None] + z[None, :])[None])


def _box(centre: np.ndarray, half: float, shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(
        slice(max(0, int(c - half)), min(int(n), int(c + half) + 2))
        for c, n in zip(centre, shape, strict=True)
    )


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _irregular(radius: np.ndarray, noise: np.ndarray, amplitude: float) -> np.ndarray:
    """Bumps and dents on a normalised radius; bounded so a blob stays within 1.6 of its axes."""
    return radius / np.clip(1 + amplitude * noise, 0.6, 1.6)


def _rotated_grid(
    rng: np.random.Generator, box: tuple[slice, ...], centre: np.ndarray
) -> np.ndarray:
    """Voxel offsets from ``centre`` over ``box`` in a random orientation, shape (3, *box)."""
    offsets = np.meshgrid(
        *(
            np.arange(s.start, s.stop, dtype=np.float32) - c
            for s, c in zip(box, centre, strict=True)
        ),
        indexing="ij",
    )
    return np.tensordot(_random_rotation(rng).astype(np.float32), np.stack(offsets), axes=1)


def _add_blob(
    cls: np.ndarray,
    rng: np.random.Generator,
    centre: np.ndarray,
    radius: float,
    new_class: int,
    over: Sequence[int],
) -> None:
    """Paint an irregular blob (a noisy ellipsoid) of ``new_class`` over the classes ``over``."""
    axes = radius * rng.uniform(0.7, 1.3, 3)
    box = _box(centre, 1.6 * axes.max() + 1, cls.shape)
    rotated = _rotated_grid(rng, box, centre)
    norm = np.sqrt(sum((r / a) ** 2 for r, a in zip(rotated, axes, strict=True)))
    norm = _irregular(norm, _smooth_noise(rng, norm.shape, max(radius / 2, 1.0)), 0.25)
    sub = cls[box]
    sub[(norm < 1) & np.isin(sub, over)] = new_class


def _anatomy(rng: np.random.Generator, shape: tuple[int, int, int]) -> dict:
    """Tissue classes of a tumour-free brain, plus the fields that tumour placement needs, on
    ``crop``, the part of the volume that can hold brain (computing on all of it costs twice)."""
    scale = np.array(shape) / np.array(FULL_SHAPE)
    vox = float(np.prod(scale) ** (1 / 3))  # voxels per millimetre of a full-size brain
    centre = np.array([120, 122, 76]) * scale + rng.uniform(-4, 4, 3) * scale
    semi = (
        np.array([68.0, 84.0, 62.0]) * scale * rng.uniform(0.93, 1.05) * rng.uniform(0.96, 1.04, 3)
    )
    # the surface below stays within 1 / (1 - 0.05 * 2.5) of the egg's semi-axes
    reach = semi * 1.15 * np.array([1.07, 1.0, 1.0]) + 1
    crop = tuple(
        slice(max(0, int(c - r)), min(n, int(c + r) + 2))
        for c, r, n in zip(centre, reach, shape, strict=True)
    )
    x, y, z = (
        np.arange(s.start, s.stop, dtype=np.float32) - c for s, c in zip(crop, centre, strict=True)
    )
    centre = centre - [s.start for s in crop]
    shape = tuple(s.stop - s.start for s in crop)
    yn = y / semi[1]  # -1 anterior (frontal pole), +1 posterior (occipital pole)

    # Egg-shaped, wider at the back, flatter below (flattest under the frontal lobes), with a
    # notch between frontal and temporal lobes and a smooth random deformation for lobes.
    width = semi[0] * (1 + 0.07 * yn)
    xn2 = (x[:, None] / width[None, :]) ** 2
    below = semi[2] * (0.8 - 0.3 * np.clip(-yn - 0.3, 0, 1))
    zn2 = (z[None, :] / np.where(z[None, :] > 0, semi[2], below[:, None])) ** 2
    notch = 0.18 * np.exp(
        -((yn[:, None] + 0.12) ** 2) / 0.01 - (z[None, :] / semi[2] + 0.2) ** 2 / 0.01
    )
    radius = (
        np.sqrt(xn2[:, :, None] + (yn[:, None] ** 2 + zn2)[None]) + xn2[:, :, None] * notch[None]
    )
    lobes = _smooth_noise(rng, shape, 18 * vox)
    radius *= 1 + 0.05 * np.clip(lobes, -2.5, 2.5)
    brain = radius < 1
    distance = np.sqrt(x[:, None, None] ** 2 + (y[:, None] ** 2 + z[None, :] ** 2)[None])
    depth = (1 - radius) * distance / np.maximum(radius, 0.2) / vox  # mm from the surface

    cls = np.where(brain, WHITE, BACKGROUND).astype(np.uint8)
    texture = _smooth_noise(rng, shape, 1.5 * vox)

    # Cortex: sulci are sheets where a noise sampled nearly along rays from the centre crosses
    # zero (so they run inwards, bending a little), each to its own depth; grey matter is what
    # lies within a ribbon's thickness of the surface or of a sulcus.
    where = np.nonzero(brain & (depth < 26))
    factor = _coarse_factor(3.5 * vox)
    coarse = [-(-(n - 1) // factor) + 1 for n in shape]
    folds = _smooth_noise(rng, coarse, 3.5 * vox / factor)
    fundi = _smooth_noise(rng, coarse, 9 * vox / factor)
    toward_shell = 0.6 / radius[where] + 0.3
    points = (
        np.stack([(w - c) * toward_shell + c for w, c in zip(where, centre, strict=True)]) / factor
    )
    off_sheet = np.abs(ndimage.map_coordinates(folds, points, order=1)) / 0.31  # ~mm
    fundus = np.maximum(16 + 6 * ndimage.map_coordinates(fundi, points, order=1), 3)
    shell_depth = depth[where]
    from_sulcus = np.hypot(off_sheet, np.maximum(shell_depth - fundus, 0))
    cls[where] = np.where(np.minimum(from_sulcus, shell_depth) < 3.0, GREY, WHITE)
    sulci = from_sulcus < rng.uniform(0.5, 1.0)  # wider sulci: a more atrophic brain

    # Interhemispheric fissure down to the corpus callosum, lined with medial cortex; at the
    # vertex skull stripping takes the falx out, leaving a notch of zeros.
    midline = 1.5 * vox * np.sin(2 * np.pi * y / (1.3 * semi[1]) + rng.uniform(0, 2 * np.pi))
    off_midline = np.abs(x[:, None] - midline[None, :])
    callosum_top = semi[2] * (0.32 - 0.35 * yn**2 - 4 * np.clip(np.abs(yn) - 0.55, 0, None))
    above = z[None, :] > callosum_top[:, None]
    fissure = (off_midline < max(1.0 * vox, 0.5))[:, :, None] & above[None] & brain
    medial = (off_midline < 3.5 * vox)[:, :, None] & above[None] & brain
    cls[medial & (cls == WHITE)] = GREY

    # Deep grey matter: thalami and lentiform nuclei on each side, below the ventricles.
    vz = 0.12 * semi[2]  # height of the ventricles' bodies
    for side in (-1, 1):
        for offset, half_axes in (((11, 8, -14), (8, 13, 9)), ((22, -6, -8), (6, 16, 10))):
            at = (side * offset[0] * vox, offset[1] * vox, vz + offset[2] * vox)
            box = _box(centre + at, 1.3 * max(half_axes) * vox + 1, shape)
            nucleus = _ellipsoid_radius(
                [a[s] for a, s in zip((x, y, z), box, strict=True)], at, np.array(half_axes) * vox
            )
            cls[box][nucleus * (1 + 0.08 * texture[box]) < 1] = DEEP_GREY

    # Lateral ventricles: arched bodies each side of the septum, diverging towards the horns,
    # size varying between cases.
    half = np.array([5.0, 28.0, 8.0]) * vox * rng.uniform(0.7, 1.6) ** np.array([1, 0.3, 1])
    along = (y - 0.05 * semi[1]) / half[1]
    vertical = ((z[None, :] - (vz - 12 * vox * along**2)[:, None]) / half[2]) ** 2
    ventricle_radius = np.full(cls.shape, np.inf, np.float32)
    for side in (-1, 1):
        middle = side * (vox + half[0] + 8 * vox * along**2)
        across = ((x[:, None] - middle[None, :]) / half[0]) ** 2
        ventricle_radius = np.minimum(
            ventricle_radius, np.sqrt(across[:, :, None] + (along[:, None] ** 2 + vertical)[None])
        )
    ventricle_radius *= 1 + 0.1 * lobes
    ventricles = ventricle_radius < 1
    third = (
        (np.abs(x) < max(1.5 * vox, 0.5))[:, None, None]
        & ((yn > -0.1) & (yn < 0.15))[None, :, None]
        & ((z > vz - 25 * vox) & (z < vz - 8 * vox))[None, None, :]
    )

    cls[brain & ((depth < 1.0) | fissure | ventricles | third)] = CSF
    cls[tuple(w[sulci] for w in where)] = CSF

    # Vessels, bright on T1ce: choroid plexus, cortical veins in some sulci, sagittal sinus.
    choroid = (ventricle_radius < 0.7) & (y > 0.05 * semi[1] + 0.5 * half[1])[None, :, None]
    cls[choroid | ((cls == CSF) & (depth < 20) & (texture > 1.8)) | (fissure & (depth < 6))] = (
        VESSEL
    )
    cls[fissure & (depth < 3)] = BACKGROUND

    # FLAIR-bright white-matter lesions that are not tumour, mostly periventricular.
    if rng.random() < 0.5:
        near = np.flatnonzero((ventricle_radius > 1.1) & (ventricle_radius < 1.6) & (cls == WHITE))
        deep = np.flatnonzero((cls == WHITE) & (depth > 10))
        for _ in range(rng.integers(1, 6)):
            pool = near if len(near) and rng.random() < 0.7 else deep
            if len(pool):
                at = np.array(np.unravel_index(rng.choice(pool), shape))
                _add_blob(cls, rng, at, rng.uniform(1.5, 5) * vox, WMH, (WHITE,))

    return {
        "crop": crop,
        "cls": cls,
        "depth": depth,
        "texture": texture,
        "ventricle_radius": ventricle_radius,
        "midline": midline,
        "centre": centre,
        "vox": vox,
    }


def _add_tumour(rng: np.random.Generator, anatomy: dict) -> None:
    """A glioma of random size, place and kind: enhancing rim round necrosis, solid enhancing,
    or non-enhancing, inside irregular oedema that spreads through white matter."""
    cls, depth, vox = anatomy["cls"], anatomy["depth"], anatomy["vox"]
    whole = rng.uniform(5, 30)  # whole-tumour radius, mm: 1 to 6 cm across
    core = max(whole * rng.uniform(0.45, 0.8), 3.0)
    kind = rng.choice(["rim", "solid", "non-enhancing"], p=[0.65, 0.2, 0.15])
    necrosis = core - rng.uniform(2, 6) if kind == "rim" else 0.0

    tissue = np.isin(cls, (WHITE, GREY, DEEP_GREY, WMH))
    x = np.arange(cls.shape[0])[:, None, None]
    lateral = np.abs(x - anatomy["centre"][0] - anatomy["midline"][None, :, None]) > 6 * vox
    candidates = tissue & lateral & (depth > min(0.7 * core + 4, 30))
    if rng.random() < 0.25:  # centred near a ventricle, so that the tumour may reach it
        periventricular = candidates & (anatomy["ventricle_radius"] < 1 + core * vox / 10)
        if periventricular.any():
            candidates = periventricular
    pool = np.flatnonzero(candidates)
    if not len(pool):
        return
    centre = np.array(np.unravel_index(rng.choice(pool), cls.shape))

    core_axes = core * vox * rng.uniform(0.75, 1.3, 3)
    whole_axes = whole * vox * rng.uniform(0.75, 1.3, 3)
    shift = rng.normal(0, 0.15 * core * vox, 3)
    reach = 1.6 * max(whole_axes.max(), core_axes.max()) + np.abs(shift).max() + 1
    box = _box(centre, reach, cls.shape)
    rotated = _rotated_grid(rng, box, centre)
    shape = rotated.shape[1:]
    sigma = max(core * vox / 2.5, 1.0)
    u = np.sqrt(sum((r / a) ** 2 for r, a in zip(rotated, core_axes, strict=True)))
    u = _irregular(u, _smooth_noise(rng, shape, sigma), 0.25)
    w = np.sqrt(sum(((r - s) / a) ** 2 for r, s, a in zip(rotated, shift, whole_axes, strict=True)))
    w = _irregular(w, _smooth_noise(rng, shape, max(whole * vox / 3, 1.0)), 0.35)

    sub, sub_depth = cls[box], depth[box]
    inside = sub != BACKGROUND
    spread = np.isin(sub, (WHITE, WMH, DEEP_GREY)) | ((sub == GREY) & (w < 0.7))
    sub[(w < 1) & spread & inside & (sub_depth > 1)] = OEDEMA
    core_mask = (u < 1) & inside & (sub_depth > 1)
    if kind == "non-enhancing":
        sub[core_mask] = NECROSIS
    else:
        sub[core_mask] = ENHANCING
        if necrosis > 1.5:
            ragged = u + 0.1 * _smooth_noise(rng, shape, sigma)
            sub[core_mask & (ragged < necrosis / core)] = NECROSIS


def synthesize_case(
    rng: np.random.Generator, shape: Sequence[int] = FULL_SHAPE
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One synthetic case: the four modalities (int16, 0 outside the brain) keyed by MODALITIES,
    and the region map (uint8: 0 background, i + 1 for SUB_REGIONS[i]). Arrays are (x, y, z)."""
    shape = tuple(int(n) for n in shape)
    anatomy = _anatomy(rng, shape)
    if rng.random() < 0.9:  # about one case in ten has no tumour
        _add_tumour(rng, anatomy)
    crop, cls = anatomy["crop"], anatomy["cls"]
    brain = np.flatnonzero(cls)
    shading = 1 + TEXTURE[cls] * anatomy["texture"]
    contrast = CONTRAST * rng.uniform(0.94, 1.06, CONTRAST.shape).astype(np.float32)
    contrast[ENHANCING, 1] *= rng.uniform(0.9, 1.25)
    contrast[NECROSIS, 3] *= rng.uniform(0.7, 1.4)

    images = {}
    for channel, modality in enumerate(MODALITIES):
        image = ndimage.gaussian_filter(contrast[:, channel][cls] * shading, 0.6, truncate=2.0)
        in_plane = _smooth_noise(rng, cls.shape[:2], cls.shape[0] / 4)
        through = _smooth_noise(rng, cls.shape[2:], cls.shape[2] / 4)
        bias = np.exp(
            rng.uniform(0.08, 0.2) * (in_plane[:, :, None] + 0.5 * through[None, None, :])
        )
        values = (image * bias).ravel()[brain]
        sigma = rng.uniform(0.015, 0.04)
        values = np.hypot(
            values + sigma * rng.standard_normal(len(values), dtype=np.float32),
            sigma * rng.standard_normal(len(values), dtype=np.float32),
        )
        values *= 10 ** rng.uniform(np.log10(250), np.log10(3500))
        volume = np.zeros(cls.shape, np.int16)
        volume.ravel()[brain] = np.clip(np.rint(values), 1, 32767).astype(np.int16)
        images[modality] = np.zeros(shape, np.int16)
        images[modality][crop] = volume
    regions = np.zeros(shape, np.uint8)
    regions[crop] = REGION_OF_CLASS[cls]
    return images, regions


def _layout(layout: str | Layout) -> Layout:
    if isinstance(layout, Layout):
        return layout
    try:
        return LAYOUTS[str(layout).lower()]
    except KeyError:
        raise ValueError(f"unknown layout {layout!r}; choose one of {sorted(LAYOUTS)}") from None


def _write_atomic(path: Path, data: bytes) -> None:
    """Write under a hidden temporary name, then rename: a killed run leaves no half file that
    find_cases would pick up."""
    with atomic_path(path) as partial:
        partial.write_bytes(data)


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    # compresslevel 1 is nibabel's default; mtime=0 makes same-seed files byte-identical
    _write_atomic(path, gzip.compress(image.to_bytes(), compresslevel=1, mtime=0))


def write_case(
    output_dir: str | Path,
    case_id: str,
    images: dict[str, np.ndarray],
    regions: np.ndarray,
    layout: str | Layout = "brats2020",
    with_label: bool = True,
    affine: np.ndarray | None = None,
) -> Path:
    """Write one case in a release's own file layout, labels renumbered to that release.

    Returns the case folder (BraTS layouts) or the 4-D image file (MSD). An existing case of the
    same name is overwritten, and its label removed when ``with_label`` is False.
    """
    layout = _layout(layout)
    output_dir = Path(output_dir)
    affine = brats_affine(regions.shape) if affine is None else np.asarray(affine, float)
    numbering = np.zeros(len(SUB_REGIONS) + 1, np.uint8)
    for index, region in enumerate(SUB_REGIONS):
        numbering[index + 1] = layout.label(region)
    label = numbering[regions]
    if layout.name == MSD.name:
        stacked = np.empty((*regions.shape, len(MODALITIES)), np.int16)
        for modality, channel in zip(MODALITIES, layout.channel_order, strict=True):
            stacked[..., channel] = images[modality]
        split, other = ("imagesTr", "imagesTs") if with_label else ("imagesTs", "imagesTr")
        image_path = output_dir / split / f"{case_id}.nii.gz"
        _save_nifti(stacked, affine, image_path)
        (output_dir / other / image_path.name).unlink(missing_ok=True)
        label_path = output_dir / "labelsTr" / image_path.name
        if with_label:
            _save_nifti(label, affine, label_path)
        else:
            label_path.unlink(missing_ok=True)
        return image_path
    case_dir = output_dir / case_id
    for modality, suffix in zip(MODALITIES, layout.modality_files, strict=True):
        _save_nifti(
            images[modality].astype(np.int16), affine, case_dir / layout.file_name(case_id, suffix)
        )
    label_path = case_dir / layout.file_name(case_id, LABEL_SUFFIX)
    if with_label:
        _save_nifti(label, affine, label_path)
    else:
        label_path.unlink(missing_ok=True)
    return case_dir


def write_msd_dataset_json(output_dir: str | Path) -> Path:
    """MSD's dataset.json listing every case now in imagesTr and imagesTs, so that find_cases
    recognises the folder and repeated runs accumulate."""
    output_dir = Path(output_dir)

    def listed(split: str) -> list[str]:
        folder = output_dir / split
        names = sorted(p.name for p in folder.glob("*.nii.gz") if not p.name.startswith("."))
        return [f"./{split}/{name}" for name in names]

    training = listed("imagesTr")
    test = listed("imagesTs")
    dataset = {
        "name": "BrainTumour",
        "description": "Synthetic BraTS-like cases from scripts/make_demo_data.py (not real data)",
        "tensorImageSize": "4D",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {
            "0": "background",
            "1": "edema",
            "2": "non-enhancing tumor",
            "3": "enhancing tumour",
        },
        "numTraining": len(training),
        "numTest": len(test),
        "training": [
            {"image": image, "label": image.replace("./imagesTr/", "./labelsTr/")}
            for image in training
        ],
        "test": test,
    }
    path = output_dir / "dataset.json"
    _write_atomic(path, (json.dumps(dataset, indent=4) + "\n").encode())
    return path


def _as_shape(shape: Sequence[int] | str) -> tuple[int, int, int]:
    """Accept fire's tuple for ``--shape 96,96,64`` as well as a string such as "96x96x64"."""
    if isinstance(shape, str):
        shape = [part for part in shape.replace("x", ",").split(",") if part.strip()]
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be three sizes of at least 16 voxels, got {shape}")
    return shape


def make_demo_data(
    output_dir: str | Path = "data/demo",
    num_cases: int = 8,
    seed: int = 0,
    layout: str = "brats2020",
    shape: Sequence[int] | str = FULL_SHAPE,
    with_labels: bool = True,
    start_index: int = 1,
) -> list[Path]:
    """Write ``num_cases`` synthetic cases; returns what write_case returned for each.

    Case ``i`` is drawn from ``default_rng([seed, i])``, so it is the same whatever
    ``num_cases`` and ``start_index`` are. Existing cases of the same names are overwritten.
    """
    layout = _layout(layout)
    shape = _as_shape(shape)
    output_dir = Path(output_dir)
    started = time.perf_counter()
    written = []
    for index in range(start_index, start_index + num_cases):
        tic = time.perf_counter()
        case_id = CASE_NAMES.get(layout.name, "case_{:03d}").format(index)
        images, regions = synthesize_case(np.random.default_rng([seed, index]), shape)
        written.append(write_case(output_dir, case_id, images, regions, layout, with_labels))
        tumour_ml = np.count_nonzero(regions) / 1000  # 1 mm voxels
        print(f"{case_id}: tumour {tumour_ml:.1f} ml, {time.perf_counter() - tic:.2f} s")
    if layout.name == MSD.name:
        write_msd_dataset_json(output_dir)
    print(
        f"wrote {num_cases} {layout.name} cases of shape {shape} to {output_dir} "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return written
