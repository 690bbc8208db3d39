"""Deterministic patient-level splits of a dataset folder into a MONAI datalist.

The split depends only on the patient ids and the seed, so it is the same on every machine and
for every run, and a patient's scans (BraTS 2023 time points) never straddle two sides.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bundle.data.layouts import SPLITS, DatasetError, find_cases, patient_id
from bundle.data.validation import validate_case
from bundle.io.atomic import write_text
from bundle.workflow.options import OptionError

logger = logging.getLogger(__name__)


def split_patients(
    patients: list[str], num_folds: int, test_fraction: float, seed: int
) -> tuple[list[str], list[list[str]]]:
    """Shuffle the sorted patient ids with the seed; the first ones are the test set, the rest
    are dealt round-robin into ``num_folds`` folds."""
    if num_folds < 1:
        raise OptionError(f"--num_folds must be >= 1, got {num_folds}")
    if not 0.0 <= test_fraction < 1.0:
        raise OptionError(f"--test_fraction must be in [0, 1), got {test_fraction}")
    order = sorted(set(patients))
    rng = np.random.default_rng(seed)
    order = [order[i] for i in rng.permutation(len(order))]
    n_test = math.ceil(test_fraction * len(order)) if test_fraction > 0 else 0
    rest = order[n_test:]
    return order[:n_test], [rest[k::num_folds] for k in range(num_folds)]


def read_split_file(path: str | Path) -> dict[str, str]:
    """The side of each case a split file names: JSON ``{"training": [case ids],
    "validation": [...], "testing": [...]}``, each case on one side only."""
    path = Path(path)
    try:
        listed = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"split file {path} is not readable JSON ({err})") from err
    if not isinstance(listed, dict) or set(listed) - set(SPLITS) or not listed.get("training"):
        raise DatasetError(
            f"split file {path} must map {', '.join(SPLITS)} to lists of case ids, with at "
            "least one training case"
        )
    side_of: dict[str, str] = {}
    for side in SPLITS:
        for case_id in listed.get(side, []):
            if case_id in side_of:
                raise DatasetError(
                    f"split file {path} puts case {case_id} in {side_of[case_id]} and {side}"
                )
            side_of[str(case_id)] = side
    return side_of


def build_datalist(
    dataset_dir: str | Path,
    num_folds: int = 5,
    fold: int = 0,
    test_fraction: float = 0.2,
    seed: int = 0,
    read_data: bool = True,
    validate: bool = True,
    split_file: str | Path | None = None,
    exclude: Sequence[str | Path] = (),
) -> dict:
    """Validate every case of a dataset folder and split it for training.

    Returns ``{"training", "validation", "testing"}`` lists of datalist entries (each with its
    ``fold``; -1 for test cases) plus the split settings. Labelled cases are split by patient:
    test patients first, then ``fold`` is validation and the other folds are training. Cases
    without a label file cannot be trained on and all go to ``testing``. ``validate=False``
    leaves the checks to the caller (inference skips a bad case rather than stopping).
    ``split_file`` (see :func:`read_split_file`) fixes the sides by case id instead; the
    folder's cases it does not name are test cases, and naming a case the folder lacks is an
    error. ``exclude``: folders under ``dataset_dir`` that are no cases (the run's outputs).
    """
    if not 0 <= fold < num_folds:
        raise OptionError(f"--fold must be in [0, {num_folds}) (--num_folds), got {fold}")
    cases = find_cases(dataset_dir, exclude)
    if validate:
        for case in cases:
            validate_case(case, read_data=read_data)
    labelled = [c for c in cases if "label" in c]
    test_patients, folds = split_patients(
        [patient_id(c) for c in labelled], num_folds, test_fraction, seed
    )
    fold_of = {p: k for k, patients in enumerate(folds) for p in patients}
    fold_of.update({p: -1 for p in test_patients})
    datalist = {side: [] for side in SPLITS}
    if split_file:
        side_of = read_split_file(split_file)
        absent = sorted(set(side_of) - {case["case_id"] for case in cases})
        if absent:
            raise DatasetError(
                f"split file {split_file} names cases that {dataset_dir} does not hold: "
                + ", ".join(absent)
            )
        for case in cases:
            side = side_of.get(case["case_id"], "testing") if "label" in case else "testing"
            fold_number = {"training": 1, "validation": 0}.get(side, -1)
            datalist[side].append(dict(case, fold=fold_number))
    for case in [] if split_file else cases:
        entry = dict(case, fold=fold_of.get(patient_id(case), -1))
        if entry["fold"] == -1:
            datalist["testing"].append(entry)
        elif entry["fold"] == fold:
            datalist["validation"].append(entry)
        else:
            datalist["training"].append(entry)
    datalist.update(
        dataset_dir=str(dataset_dir),
        layout=cases[0]["layout"],
        num_folds=num_folds,
        fold=fold,
        test_fraction=test_fraction,
        seed=seed,
        split_file=str(split_file) if split_file else None,
    )
    return datalist


def write_json(data: dict, path: str | Path) -> Path:
    """Write JSON atomically: a killed run leaves the old file or the new one, never half."""
    write_text(path, json.dumps(data, indent=2))
    return Path(path)


def split_counts(datalist: dict) -> str:
    """ "3 training, 1 validation, 1 testing": what each side of a datalist holds."""
    return ", ".join(f"{len(datalist.get(side, []))} {side}" for side in SPLITS)


def check_trainable(datalist: dict, source: str) -> None:
    """Refuse a split that training cannot use: no training or no validation case (training
    would end in a DataLoader traceback, or validate nothing)."""
    if not datalist.get("training") or not datalist.get("validation"):
        raise DatasetError(
            f"{source}: the split has {split_counts(datalist)} case(s); training needs at least "
            "one training and one validation case (lower --test_fraction or --num_folds, or add "
            "labelled cases)"
        )


def _check_each_case_once(datalist: dict, path: Path) -> None:
    """Refuse a datalist that lists a case twice, on one side or two: it would be trained and
    validated (or tested) on at once, or weigh double."""
    side_of: dict[str, str] = {}
    for side in SPLITS:
        for case in datalist.get(side, []):
            case_id = case.get("case_id", "?")
            if case_id in side_of:
                raise DatasetError(
                    f"datalist file {path} lists case {case_id} in {side_of[case_id]} and {side}"
                )
            side_of[case_id] = side


def _from_folder(case: dict, folder: Path) -> dict:
    """A datalist entry whose relative file paths are taken from ``folder`` (the datalist
    file's), as MONAI's own datalists are, not from wherever the command runs."""

    def where(path: str) -> str:
        return str(folder / path) if not Path(path).is_absolute() else path

    entry = dict(case)
    for key in ("image", "label"):
        if isinstance(entry.get(key), str):
            entry[key] = where(entry[key])
        elif isinstance(entry.get(key), list):
            entry[key] = [where(p) for p in entry[key]]
    return entry


def read_datalist(path: str | Path) -> dict:
    """A datalist file: each side's entries with paths relative to the file's folder made
    whole, each case listed once."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"datalist file {path} does not exist")
    try:
        datalist = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"datalist file {path} is not readable JSON ({err})") from err
    if not isinstance(datalist, dict) or not datalist.get("training"):
        raise DatasetError(f"datalist file {path} has no 'training' cases")
    _check_each_case_once(datalist, path)
    for side in SPLITS:
        datalist[side] = [_from_folder(case, path.parent) for case in datalist.get(side, [])]
    return datalist


def load_datalist(
    datalist_file: str | Path | None,
    dataset_dir: str | Path,
    num_folds: int = 5,
    fold: int = 0,
    test_fraction: float = 0.2,
    seed: int = 0,
    read_data: bool = True,
    split_file: str | Path | None = None,
) -> dict:
    """The datalist the configs train on, every case validated before any work: a written file
    if given (its errors name the file as well as the case), else built from the folder.
    ``read_data`` reads every voxel too (truncated files, NaN, empty modalities). A split
    without a training or a validation case is refused; the log says what each side holds."""
    if not datalist_file:
        datalist = build_datalist(
            dataset_dir, num_folds, fold, test_fraction, seed, read_data, split_file=split_file
        )
        source = f"dataset folder {dataset_dir} (--num_folds {num_folds}, --fold {fold}, "
        source += f"--test_fraction {test_fraction})"
    else:
        datalist = read_datalist(datalist_file)
        source = f"datalist file {datalist_file}"
        for side in SPLITS:
            for case in datalist[side]:
                try:
                    validate_case(case, read_data=read_data)
                except DatasetError as err:
                    raise DatasetError(f"datalist file {datalist_file}: {err}") from err
    check_trainable(datalist, source)
    logger.info(f"{source}: {split_counts(datalist)} cases")
    return datalist


def select_cases(
    dataset_dir: str | Path,
    split: str = "all",
    num_folds: int = 5,
    fold: int = 0,
    test_fraction: float = 0.2,
    seed: int = 0,
    split_file: str | Path | None = None,
    exclude: Sequence[str | Path] = (),
) -> list[dict]:
    """The cases of a folder to run inference on: all of them, or one side of the split that
    training made with the same settings (e.g. ``testing``: the held-out patients). Not
    validated: the caller checks each case (and may skip a bad one). ``exclude``: folders
    under ``dataset_dir`` to leave out (the run's own outputs)."""
    if split == "all":
        return find_cases(dataset_dir, exclude)
    if split not in SPLITS:
        raise OptionError(f"--split must be all, {', '.join(SPLITS)}, got {split!r}")
    datalist = build_datalist(
        dataset_dir,
        num_folds,
        fold,
        test_fraction,
        seed,
        validate=False,
        split_file=split_file,
        exclude=exclude,
    )
    return datalist[split]
