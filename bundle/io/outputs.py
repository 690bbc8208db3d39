"""Inference outputs: their names, which cases still need them, and writing them so that a
killed run never leaves a half-written file, a half-written case, or one case's files from two
runs."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor, PathLike
from monai.data import MetaTensor, NibabelWriter
from monai.transforms import MapTransform
from torch.utils.data import Sampler

from bundle.data.layouts import DEFAULT_LAYOUT, DatasetError, case_id_from_path
from bundle.data.validation import validate_case
from bundle.io.atomic import LOCK_PREFIX, atomic_path, exclusive, remove_stale_temporaries
from bundle.io.slicer import write_seg_nrrd
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


OUTPUT_NAMES: dict[str, str] = {
    "mean": "{case}_pred_mean.nii.gz",
    "variance": "{case}_pred_var.nii.gz",
    "votes": "{case}_pred_votes.nii.gz",
    "pred": "{case}_pred_seg.nii.gz",
    "samples": "{case}_pred_samples.nii.gz",
    "seg_nrrd": "{case}_pred.seg.nrrd",
    "quicklook": "{case}_pred_quicklook.png",
}
"""Every file inference writes for a case, by output key: the one table of names that the
writer, the case filter, evaluation, the report, the scripts, the tests and the docs use.

``_pred`` keeps them apart from every layout's own files (BraTS 2020 names its label
``{case}_seg.nii.gz``), and ``_seg`` (a word of its own, as 3D Slicer's
``(\\b|_)[Ss]eg(\\b|_)`` wants) makes Slicer load the segmentation as a labelmap; a
``.seg.nrrd`` ending makes it a Segmentation."""

NIFTI_DTYPES: dict[str, torch.dtype] = {
    "mean": torch.float32,
    "variance": torch.float32,
    "votes": torch.float32,
    "samples": torch.float32,
    "pred": torch.uint8,
}
"""The NIfTI outputs (data keys of the post-processed ensemble) and the dtype each is written in."""

DISPLAY_WINDOWS: dict[str, tuple[float, float | None]] = {
    "mean": (0.0, 1.0),
    "variance": (0.0, None),
    "votes": (0.0, 1.0),
    "samples": (0.0, 1.0),
}
"""Display window written into each map's NIfTI header: probabilities on 0..1; the variance on
0..its maximum, since a confident model's variance is far below the 0.25 it can reach (the
segmentation is a labelmap, shown by its labels)."""

DISPLAY_FALLBACK_MAX = 0.25
"""The variance's window top when it is 0 everywhere: the largest variance of a 0/1 ensemble."""


def output_path(output_dir: str | Path, case_id: str, key: str) -> Path:
    """The file inference writes for an output of a case, e.g. ``<out>/<case>_pred_mean.nii.gz``."""
    return Path(output_dir) / OUTPUT_NAMES[key].format(case=case_id)


def expected_outputs(quicklook: bool | str = True, save_samples: bool | str = False) -> list[str]:
    """The outputs a finished case has: its maps, segmentation and Slicer file, the quick-look
    and the samples when those are switched on."""
    keys = ["mean", "variance", "votes", "pred", "seg_nrrd"]
    return keys + ["quicklook"] * flag(quicklook) + ["samples"] * flag(save_samples)


def input_files(case: dict) -> list[Path]:
    """Every file a datalist entry reads: its image file(s) and label."""
    return [Path(p) for p in np.atleast_1d(case["image"])] + (
        [Path(case["label"])] if "label" in case else []
    )


def check_output_folder(output_dir: str | Path, cases: list[dict]) -> None:
    """Refuse an output folder that holds an input file of the run: outputs written there could
    replace an input (an older output name was BraTS 2020's label name) and would be read as
    input by the next run."""
    folder = Path(output_dir).resolve()
    for case in cases:
        for path in input_files(case):
            if path.resolve().parent == folder:
                raise DatasetError(
                    f"output folder {output_dir} holds input file {path} of case "
                    f"{case['case_id']}; write the outputs to another folder (--output_dir)"
                )


class CaseFilter:
    """The cases an inference run works on: every case of the folder that passes validation and
    is not finished yet (unless ``overwrite``); then, case by case, :meth:`claims`.

    The output folder must not hold an input file (:func:`check_output_folder`). A bad case is
    skipped with one error line naming it and its file, so the others still run; :meth:`check`
    (the workflow's ``finalize``) then ends the run with exit code 1. A case is finished when
    every one of its outputs (:func:`expected_outputs`) exists, so a stopped run over a folder
    picks up where it ended, even where it stopped between two files of a case; hidden temporary
    files that a killed run left in the output folder are removed first.
    """

    def __init__(
        self,
        output_dir: str,
        overwrite: bool | str = False,
        read_data: bool = True,
        quicklook: bool | str = True,
        save_samples: bool | str = False,
    ):
        self.output_dir = output_dir
        self.overwrite = flag(overwrite)
        self.read_data = read_data
        self.outputs = expected_outputs(quicklook, save_samples)
        self.failed: list[str] = []
        self.started = time.time()

    def finished(self, case_id: str, since: float = 0.0) -> bool:
        """Whether every output of the case exists (each written after ``since``)."""
        paths = [output_path(self.output_dir, case_id, key) for key in self.outputs]
        return all(p.is_file() and p.stat().st_mtime >= since for p in paths)

    def __call__(self, cases: list[dict]) -> list[dict]:
        check_output_folder(self.output_dir, cases)
        remove_stale_temporaries(self.output_dir)
        selected = []
        for case in cases:
            try:
                validate_case(case, read_data=self.read_data)
            except DatasetError as err:
                logger.error(f"skipped: {err}")
                self.failed.append(case["case_id"])
                continue
            if self.finished(case["case_id"]) and not self.overwrite:
                logger.info(
                    f"{case['case_id']}: outputs exist in {self.output_dir}, skipped "
                    "(overwrite=true to redo)"
                )
                continue
            selected.append(case)
        return selected

    def claims(self, datalist: list[dict]) -> CaseClaims:
        """The sampler that hands the cases of ``datalist`` out one at a time (see
        :class:`CaseClaims`)."""
        return CaseClaims(datalist, self)

    def check(self) -> None:
        """Exit with code 1, after a summary line, if any case was skipped as bad."""
        if self.failed:
            logger.error(f"{len(self.failed)} case(s) failed: {', '.join(self.failed)}")
            sys.exit(1)


class CaseClaims(Sampler):
    """The data loader's order of cases, each claimed just before it is loaded.

    A case is claimed through its lock file in the output folder
    (:func:`bundle.io.atomic.exclusive`), held until the loader asks for the next case, by when
    the case's outputs are written. A case that another run holds is left to it, and one that
    another run finished since this one started is not redone, so two runs over one folder
    share the cases rather than both computing each. A claimed case's earlier outputs are
    deleted first: its files are always one run's consistent set (no ``_samples`` of an earlier
    run beside a newer mean). No ``__len__``: the number of cases is known once they are done.
    """

    def __init__(self, datalist: list[dict], case_filter: CaseFilter) -> None:
        self.datalist = datalist
        self.filter = case_filter

    def __iter__(self) -> Iterator[int]:
        for index, case in enumerate(self.datalist):
            case_id = case["case_id"]
            lock = Path(self.filter.output_dir) / f"{LOCK_PREFIX}{case_id}"
            with exclusive(lock) as owner:
                if owner is not None:
                    logger.info(f"{case_id}: being written by process {owner}, skipped")
                    continue
                since = 0.0 if not self.filter.overwrite else self.filter.started
                if self.filter.finished(case_id, since):
                    logger.info(f"{case_id}: written by another run meanwhile, skipped")
                    continue
                for key in OUTPUT_NAMES:
                    output_path(self.filter.output_dir, case_id, key).unlink(missing_ok=True)
                yield index


class SaveEnsembled(MapTransform):
    """Write a case's mean, variance, votes, segmentation (and samples, when present) as NIfTI,
    and the segmentation again as a 3D Slicer Segmentation, each under its :data:`OUTPUT_NAMES`
    name.

    Each NIfTI with its dtype and display window, in the geometry the data carry (``Invertd``
    has put them back into the input's), through the atomic writer, which reports a full disk
    (MONAI's ``SaveImaged`` would turn it into "cannot find a suitable writer"). The segments
    are named after ``regions`` in the case's label numbering (its ``layout``, see
    :func:`bundle.data.regions.labelmap_classes`).
    """

    def __init__(
        self,
        output_dir: str,
        keys: KeysCollection = tuple(NIFTI_DTYPES),
        regions: str | Sequence[str] = "wt",
        layout_key: str = "layout",
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.output_dir = output_dir
        self.regions = regions
        self.layout_key = layout_key

    def write_nifti(self, key: str, data: MetaTensor, case_id: str) -> None:
        """One (C, X, Y, Z) map as ``OUTPUT_NAMES[key]`` (a single channel as a 3-D volume)."""
        writer = AtomicNibabelWriter(
            output_dtype=NIFTI_DTYPES[key], display_window=DISPLAY_WINDOWS.get(key)
        )
        writer.set_data_array(data, channel_dim=0, squeeze_end_dims=True)
        writer.set_metadata(data.meta, resample=False)
        writer.write(output_path(self.output_dir, case_id, key))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            case_id = case_id_from_path(d[key].meta["filename_or_obj"])
            self.write_nifti(key, d[key], case_id)
            if key == "pred":
                write_seg_nrrd(
                    d[key][0].cpu().numpy(),
                    d[key].affine.cpu().numpy(),
                    self.regions,
                    d.get(self.layout_key, DEFAULT_LAYOUT),
                    output_path(self.output_dir, case_id, "seg_nrrd"),
                )
        return d
