"""3D Slicer output: the segmentation as a ``.seg.nrrd`` Segmentation with named, coloured segments.

Slicer loads the ``_pred_seg.nii.gz`` segmentation as a plain labelmap (numbers, a generic
colour table), but a ``.seg.nrrd`` as a Segmentation node: each label value becomes a segment
with its name and colour, ready for 3-D rendering and the Segment Editor.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import slicerio

from bundle.data.regions import WHOLE_TUMOUR, labelmap_classes
from bundle.io.atomic import atomic_path

COLOURS: dict[str, tuple[float, float, float]] = {
    WHOLE_TUMOUR: (1.0, 0.6, 0.0),
    "necrosis": (1.0, 0.0, 0.0),
    "edema": (0.0, 0.8, 0.0),
    "enhancing": (1.0, 1.0, 0.0),
}
"""Segment colours (RGB in 0..1): the BraTS figures' red necrosis, green edema, yellow enhancing
tumour, and orange for a whole-tumour-only model's one segment."""

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""NIfTI affines map voxels to RAS; NRRD's ``space`` here is LPS (as DICOM and Slicer's files)."""


def write_seg_nrrd(
    labelmap: np.ndarray,
    affine: np.ndarray,
    regions: str | Sequence[str],
    layout: str,
    path: str | Path,
) -> Path:
    """Write a (X, Y, Z) labelmap whose voxel-to-RAS matrix is ``affine`` as a Slicer Segmentation
    (one segment per class of :func:`bundle.data.regions.labelmap_classes`), atomically."""
    segments = [
        {"id": f"Segment_{value}", "name": name, "labelValue": value, "color": COLOURS[name]}
        for name, value in labelmap_classes(regions, layout).items()
    ]
    segmentation = {
        "voxels": np.ascontiguousarray(labelmap, dtype=np.uint8),
        "ijkToLPS": RAS_TO_LPS @ np.asarray(affine, dtype=np.float64),
        "segments": segments,
    }
    with atomic_path(path) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation)
    return Path(path)
