"""BraTS-style dataset layouts: how cases are named on disk and what their labels mean.

Every layout is mapped onto one convention inside the bundle: the image is the four modalities
in the order t1, t1ce, t2, flair, and the label's tumour sub-regions are named (necrosis, edema,
enhancing) so that region masks never depend on a release's label numbering.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
"""The bundle's channel order, whatever the layout stores."""

SUB_REGIONS: tuple[str, ...] = ("necrosis", "edema", "enhancing")
"""Tumour sub-regions that every layout labels, under its own numbers."""

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")

SPLITS: tuple[str, ...] = ("training", "validation", "testing")
"""The sides of a datalist: training, validation (model selection) and testing (held out)."""


logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A dataset folder, case or file that the bundle cannot use; the message names it."""


def reason(err: BaseException) -> str:
    """An exception's message cut to its first line: a library's error inside one of ours must
    keep our message on one line (torch's unpickling errors run to a dozen)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


@dataclass(frozen=True)
class Layout:
    """One release's naming and label numbering.

    ``modality_files`` are the file-name suffixes of t1, t1ce, t2, flair (separate-file layouts);
    ``channel_order`` gives, for a single 4-D file, which stored channel holds each modality.
    """

    name: str
    description: str
    separator: str = "_"
    modality_files: tuple[str, ...] = ()
    channel_order: tuple[int, ...] = (0, 1, 2, 3)
    label_of: tuple[tuple[str, int], ...] = ()

    @property
    def label_values(self) -> tuple[int, ...]:
        """Every value a label file of this layout may hold, background first."""
        return (0, *sorted(value for _, value in self.label_of))

    def label(self, region: str) -> int:
        """The label value this layout uses for a named sub-region."""
        return dict(self.label_of)[region]

    def file_name(self, case_id: str, suffix: str) -> str:
        """Name of one file of a separate-file case, e.g. ``BraTS20_Training_001_t1.nii.gz``."""
        return f"{case_id}{self.separator}{suffix}.nii.gz"


BRATS2020 = Layout(
    name="brats2020",
    description="BraTS 2020/2021: <case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz, labels {0,1,2,4}",
    separator="_",
    modality_files=("t1", "t1ce", "t2", "flair"),
    label_of=(("necrosis", 1), ("edema", 2), ("enhancing", 4)),
)
BRATS2023 = Layout(
    name="brats2023",
    description="BraTS 2023+: <case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz, labels {0,1,2,3}",
    separator="-",
    modality_files=("t1n", "t1c", "t2w", "t2f"),
    label_of=(("necrosis", 1), ("edema", 2), ("enhancing", 3)),
)
MSD = Layout(
    name="msd",
    description=(
        "Medical Segmentation Decathlon Task01_BrainTumour: dataset.json, imagesTr/<case>.nii.gz "
        "(4-D, channels FLAIR,T1w,t1gd,T2w), labelsTr/<case>.nii.gz, labels {0,1,2,3}"
    ),
    # stored FLAIR, T1w, t1gd, T2w: t1 is channel 1, t1ce 2, t2 3, flair 0
    channel_order=(1, 2, 3, 0),
    label_of=(("edema", 1), ("necrosis", 2), ("enhancing", 3)),
)
LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (BRATS2020, BRATS2023, MSD)}
DEFAULT_LAYOUT = BRATS2020.name
"""The label numbering of a case whose datalist entry names no layout, as MONAI Label's
datastore entries (``{"image", "label"}``) and hand-written datalists: BraTS 2020/2021's."""
SEPARATE_FILE_LAYOUTS: tuple[Layout, ...] = (BRATS2020, BRATS2023)

LABEL_SUFFIX = "seg"


def _nifti_stem(path: Path) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def _find(case_dir: Path, case_id: str, layout: Layout, suffix: str) -> Path | None:
    for ext in NIFTI_SUFFIXES:
        candidate = case_dir / f"{case_id}{layout.separator}{suffix}{ext}"
        if candidate.is_file():
            return candidate
    return None


def _separate_file_layout(case_dir: Path) -> Layout | None:
    """The layout whose file names a case folder follows, judged by any of its modality files
    (so that a case missing its t1 is still recognised, and reported by validation)."""
    for layout in SEPARATE_FILE_LAYOUTS:
        if any(_find(case_dir, case_dir.name, layout, s) for s in layout.modality_files):
            return layout
    return None


def expected_files(case_dir: Path, layout: Layout) -> list[Path]:
    """The modality files (t1, t1ce, t2, flair order) and label file a separate-file case may
    hold: the file found for each, else the ``.nii.gz`` name it should have."""
    case_id = case_dir.name
    return [
        _find(case_dir, case_id, layout, suffix) or case_dir / layout.file_name(case_id, suffix)
        for suffix in (*layout.modality_files, LABEL_SUFFIX)
    ]


def _separate_file_case(case_dir: Path, layout: Layout) -> dict:
    """A case's datalist entry; a missing modality keeps its expected path, so that validation
    names the missing file for this case alone rather than failing the whole folder."""
    *images, label = expected_files(case_dir, layout)
    case = {
        "case_id": case_dir.name,
        "layout": layout.name,
        "image": [str(path) for path in images],
        "channel_order": list(range(len(MODALITIES))),
    }
    if label.is_file():
        case["label"] = str(label)
    return case


def _msd_cases(root: Path) -> list[dict]:
    cases = []
    for split, has_labels in (("imagesTr", True), ("imagesTs", False)):
        folder = root / split
        if not folder.is_dir():
            continue
        for image in sorted(folder.iterdir()):
            stem = _nifti_stem(image)
            if stem is None or image.name.startswith("."):
                continue  # macOS "._" resource forks ship inside the official archive
            case = {
                "case_id": stem,
                "layout": MSD.name,
                "image": str(image),
                "channel_order": list(MSD.channel_order),
            }
            label = root / "labelsTr" / image.name
            if has_labels and label.is_file():
                case["label"] = str(label)
            cases.append(case)
    return cases


def _msd_root(dataset_dir: Path) -> Path | None:
    """The Task01 folder: the dataset folder itself or its only child holding a dataset.json."""
    candidates = [dataset_dir, *sorted(p for p in dataset_dir.iterdir() if p.is_dir())]
    for candidate in candidates:
        if (candidate / "dataset.json").is_file() and (
            (candidate / "imagesTr").is_dir() or (candidate / "imagesTs").is_dir()
        ):
            return candidate
    return None


def _check_msd_channels(root: Path) -> None:
    """Refuse an MSD dataset.json whose modality order is not the Task01 one we remap."""
    try:
        modality = json.loads((root / "dataset.json").read_text()).get("modality")
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"{root / 'dataset.json'}: unreadable ({err})") from err
    expected = ["FLAIR", "T1w", "t1gd", "T2w"]
    if modality is not None:
        names = [modality[k] for k in sorted(modality, key=int)]
        if names != expected:
            raise DatasetError(
                f"{root / 'dataset.json'}: modality order {names}, expected {expected} "
                "(Task01_BrainTumour)"
            )


def _case_folders(root: Path, exclude: Sequence[str | Path]) -> list[dict]:
    """The cases of a folder of case folders. A folder that is not a case but holds NIfTI files
    (a copy, ``C2 (copy)``, whose files keep the original's names) is skipped with a warning
    naming it; ``exclude`` (the run's own output folders) and hidden folders are skipped
    silently: the bundle never reads its outputs as input."""
    skipped = {Path(p).absolute() for p in exclude}
    cases = []
    for case_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if case_dir.name.startswith(".") or case_dir.absolute() in skipped:
            continue
        layout = _separate_file_layout(case_dir)
        if layout is not None:
            cases.append(_separate_file_case(case_dir, layout))
        elif any(_nifti_stem(f) for f in case_dir.iterdir()):
            logger.warning(
                f"skipped folder {case_dir}: not a case (no file named like "
                f"{case_dir.name}_t1.nii.gz or {case_dir.name}-t1n.nii.gz)"
            )
    return cases


def find_cases(dataset_dir: str | Path, exclude: Sequence[str | Path] = ()) -> list[dict]:
    """Every case under a dataset folder, its layout detected from the file names.

    Accepts a BraTS 2020/2021 or 2023 folder of case folders, a single case folder, or an MSD
    Task01_BrainTumour folder (or its parent). Returns datalist entries with ``case_id``,
    ``layout``, ``image`` (four files, or one 4-D file), ``channel_order`` and, when the case
    has one, ``label``. Sub-folders that are not cases are skipped (see :func:`_case_folders`),
    those in ``exclude`` without a word. Raises DatasetError naming the folder when nothing
    matches.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    msd_root = _msd_root(root)
    if msd_root is not None:
        _check_msd_channels(msd_root)
        cases = _msd_cases(msd_root)
    elif (layout := _separate_file_layout(root)) is not None:
        cases = [_separate_file_case(root, layout)]
    else:
        cases = _case_folders(root, exclude)
    if not cases:
        raise DatasetError(
            f"dataset folder {root}: no cases found; supported layouts: "
            + "; ".join(layout.description for layout in LAYOUTS.values())
        )
    layouts = {case["layout"] for case in cases}
    if len(layouts) > 1:
        raise DatasetError(f"dataset folder {root}: mixes layouts {sorted(layouts)}")
    return cases


def patient_id(case: dict) -> str:
    """The patient a case belongs to, so that splits never put one patient on both sides.

    BraTS 2023+ names cases <cohort>-<patient>-<timepoint>; older releases have one case per
    patient.
    """
    case_id = case["case_id"]
    if case["layout"] == BRATS2023.name:
        match = re.fullmatch(r"(.+)-\d+", case_id)
        if match:
            return match.group(1)
    return case_id


def case_id_from_path(path: str | Path) -> str:
    """The case id of an image file: the file stem less a layout's modality suffix.

    Used to name outputs after the case (``bundle.io.outputs.OUTPUT_NAMES``), not its t1 file.
    """
    stem = _nifti_stem(Path(path)) or Path(path).stem
    for layout in SEPARATE_FILE_LAYOUTS:
        for suffix in layout.modality_files:
            ending = f"{layout.separator}{suffix}"
            if stem.endswith(ending) and Path(path).parent.name == stem[: -len(ending)]:
                return stem[: -len(ending)]
    return stem
