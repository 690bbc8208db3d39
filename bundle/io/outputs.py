"""Writing outputs so that a killed run never leaves a half-written file."""

from __future__ import annotations

import logging
import sys
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor, PathLike
from monai.data import NibabelWriter
from monai.transforms import MapTransform, SaveImaged

from bundle.data.layouts import DEFAULT_LAYOUT, DatasetError, output_name_formatter
from bundle.data.validation import validate_case
from bundle.io.atomic import atomic_path, remove_stale_temporaries
from bundle.io.slicer import seg_nrrd_path, write_seg_nrrd
from bundle.workflow.options import flag

logger = logging.getLogger(__name__)


class AtomicNibabelWriter(NibabelWriter):
    """``NibabelWriter`` that writes through :func:`bundle.io.atomic.atomic_path`: a reader (or 3D
    Slicer) sees a complete NIfTI or none."""

    def __init__(
        self,
        output_dtype: DtypeLike = np.float32,
        display_window: tuple[float, float | None] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(output_dtype=output_dtype, **kwargs)
        self.display_window = display_window

    def set_metadata(self, meta_dict: Mapping | None, resample: bool = True, **options) -> None:
        """Without ``resample`` take the affine as it is: MONAI's writer still runs its resampler
        then, which fails on affines whose leading 2x2 block is singular (axes permuted, as in
        many scanner orientations), although nothing needs resampling."""
        if resample:
            super().set_metadata(meta_dict, resample=resample, **options)
            return
        _, self.affine, _ = self.get_meta_info(meta_dict)
        if self.output_dtype is None and self.data_obj is not None:
            self.output_dtype = self.data_obj.dtype

    def create_backend_obj(  # type: ignore[override]  # an instance method: it needs the window
        self, data_array: NdarrayOrTensor, affine: NdarrayOrTensor | None = None, **kwargs
    ) -> nib.Nifti1Image:
        """The NIfTI image with its display window (``cal_min``/``cal_max``) in the header, so
        that a viewer opens a map on its meaningful range rather than on its extremes."""
        image = super().create_backend_obj(data_array, affine=affine, **kwargs)
        if self.display_window is not None:
            low, high = self.display_window
            if high is None:  # the data's own maximum (the fallback when the map is all low)
                high = max(float(np.max(image.dataobj)), low) or DISPLAY_FALLBACK_MAX
            image.header["cal_min"], image.header["cal_max"] = low, high
        return image

    def write(self, filename: PathLike, verbose: bool = False, **obj_kwargs) -> None:
        with atomic_path(filename) as tmp:
            super().write(tmp, verbose=verbose, **obj_kwargs)


OUTPUTS: dict[str, tuple[str, torch.dtype]] = {
    "mean": ("mean", torch.float32),
    "variance": ("var", torch.float32),
    "samples": ("samples", torch.float32),
    "pred": ("seg", torch.uint8),
}
"""Inference outputs: data key -> (file postfix, dtype); ``_seg`` makes Slicer load a labelmap."""

REQUIRED_OUTPUTS: tuple[str, ...] = ("mean", "variance", "pred")

DISPLAY_WINDOWS: dict[str, tuple[float, float | None]] = {
    "mean": (0.0, 1.0),
    "variance": (0.0, None),
    "samples": (0.0, 1.0),
}
"""Display window written into each map's NIfTI header: probabilities on 0..1; the variance on
0..its maximum, since a confident model's variance is far below the 0.25 it can reach (the
segmentation is a labelmap, shown by its labels)."""

DISPLAY_FALLBACK_MAX = 0.25
"""The variance's window top when it is 0 everywhere: the largest variance of a 0/1 ensemble."""


def output_path(output_dir: str | Path, case_id: str, key: str) -> Path:
    """The file inference writes for one output of one case, e.g. ``<out>/<case>_mean.nii.gz``."""
    return Path(output_dir) / f"{case_id}_{OUTPUTS[key][0]}.nii.gz"


class CaseFilter:
    """The cases an inference run works on: every case of the folder that passes validation and
    whose outputs are not there yet (unless ``overwrite``).

    A bad case is skipped with one error line naming it and its file, so the others still run;
    :meth:`check` (the workflow's ``finalize``) then ends the run with exit code 1. A case whose
    required outputs all exist is skipped and said so, so a stopped run over a folder picks up
    where it ended; hidden temporary files that a killed run left in the output folder are
    removed first.
    """

    def __init__(self, output_dir: str, overwrite: bool | str = False, read_data: bool = True):
        self.output_dir = output_dir
        self.overwrite = flag(overwrite)
        self.read_data = read_data
        self.failed: list[str] = []

    def __call__(self, cases: list[dict]) -> list[dict]:
        remove_stale_temporaries(self.output_dir)
        selected = []
        for case in cases:
            try:
                validate_case(case, read_data=self.read_data)
            except DatasetError as err:
                logger.error(f"skipped: {err}")
                self.failed.append(case["case_id"])
                continue
            done = all(
                output_path(self.output_dir, case["case_id"], key).is_file()
                for key in REQUIRED_OUTPUTS
            )
            if done and not self.overwrite:
                logger.info(
                    f"{case['case_id']}: outputs exist in {self.output_dir}, skipped "
                    "(overwrite=true to redo)"
                )
                continue
            selected.append(case)
        return selected

    def check(self) -> None:
        """Exit with code 1, after a summary line, if any case was skipped as bad."""
        if self.failed:
            logger.error(f"{len(self.failed)} case(s) failed: {', '.join(self.failed)}")
            sys.exit(1)


class SaveEnsembled(MapTransform):
    """Write a case's mean, variance, segmentation (and samples, when present) as NIfTI, and the
    segmentation again as a 3D Slicer Segmentation, ``{case}.seg.nrrd``.

    One ``SaveImaged`` per output, each with the bundle's name, dtype and display window, in the
    geometry the data carry (``Invertd`` has put them back into the input's), through the
    atomic writer. The segments are named after ``regions`` in the case's label numbering (its
    ``layout``, see :func:`bundle.data.regions.labelmap_classes`).
    """

    def __init__(
        self,
        output_dir: str,
        keys: KeysCollection = tuple(OUTPUTS),
        regions: str | Sequence[str] = "wt",
        layout_key: str = "layout",
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.output_dir = output_dir
        self.regions = regions
        self.layout_key = layout_key
        self.savers = []
        for key in self.keys:
            saver = SaveImaged(
                keys=key,
                output_dir=output_dir,
                output_postfix=OUTPUTS[key][0],
                output_dtype=OUTPUTS[key][1],
                resample=False,
                separate_folder=False,
                output_name_formatter=output_name_formatter,
                writer=AtomicNibabelWriter,
                print_log=False,
                allow_missing_keys=True,
            )
            saver.set_options(init_kwargs={"display_window": DISPLAY_WINDOWS.get(key)})
            self.savers.append(saver)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for saver in self.savers:
            d = saver(d)
        if "pred" in self.keys and "pred" in d:
            seg = d["pred"]
            case_id = output_name_formatter(seg.meta, self)["subject"]
            write_seg_nrrd(
                seg[0].cpu().numpy(),
                seg.affine.cpu().numpy(),
                self.regions,
                d.get(self.layout_key, DEFAULT_LAYOUT),
                seg_nrrd_path(self.output_dir, case_id),
            )
        return d
