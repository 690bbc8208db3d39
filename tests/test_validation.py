"""Bad datasets stop `scripts/datalist.py` with one clear line naming the case and the file."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.bundle_cli import run_script


def run_datalist(dataset: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return run_script("datalist", "--dataset_dir", dataset, "--output", tmp_path / "datalist.json")


@pytest.fixture
def dataset(small_datasets, tmp_path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(small_datasets["brats2020"], copy)
    return copy


def first_case(dataset: Path) -> tuple[str, Path]:
    case_dir = sorted(p for p in dataset.iterdir() if p.is_dir())[0]
    return case_dir.name, case_dir


def resave(path: Path, data: np.ndarray | None = None, affine: np.ndarray | None = None) -> None:
    image = nib.load(str(path))
    data = np.asanyarray(image.dataobj) if data is None else data
    nib.save(
        nib.Nifti1Image(data, image.affine if affine is None else affine, image.header), str(path)
    )


def assert_clear_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2 and, after any warnings, one ``error:`` line holding ``fragments``."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ")
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_good_dataset_writes_a_datalist(dataset, tmp_path):
    result = run_datalist(dataset, tmp_path)
    assert result.returncode == 0, result.stderr
    datalist = json.loads((tmp_path / "datalist.json").read_text())
    assert datalist["layout"] == "brats2020"
    assert sum(len(datalist[k]) for k in ("training", "validation", "testing")) == 3


def test_missing_modality(dataset, tmp_path):
    case, case_dir = first_case(dataset)
    (case_dir / f"{case}_flair.nii.gz").unlink()
    assert_clear_error(run_datalist(dataset, tmp_path), case, f"{case}_flair.nii.gz", "missing")


def test_mismatched_shapes(dataset, tmp_path):
    case, case_dir = first_case(dataset)
    path = case_dir / f"{case}_t2.nii.gz"
    resave(path, np.asanyarray(nib.load(str(path)).dataobj)[:-2])
    assert_clear_error(run_datalist(dataset, tmp_path), case, f"{case}_t2.nii.gz", "shape")


def test_mismatched_affines(dataset, tmp_path):
    case, case_dir = first_case(dataset)
    path = case_dir / f"{case}_t1ce.nii.gz"
    affine = nib.load(str(path)).affine.copy()
    affine[0, 3] += 2.0
    resave(path, affine=affine)
    assert_clear_error(run_datalist(dataset, tmp_path), case, f"{case}_t1ce.nii.gz", "affine")


def test_unreadable_file(dataset, tmp_path):
    case, case_dir = first_case(dataset)
    (case_dir / f"{case}_t1.nii.gz").write_bytes(b"this is not a nifti file")
    assert_clear_error(run_datalist(dataset, tmp_path), case, f"{case}_t1.nii.gz", "not a readable")


def test_truncated_file(dataset, tmp_path):
    case, case_dir = first_case(dataset)
    path = case_dir / f"{case}_t2.nii.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    assert_clear_error(run_datalist(dataset, tmp_path), case, f"{case}_t2.nii.gz")


def test_unexpected_label_values(dataset, tmp_path):
    case, case_dir = first_case(dataset)
    path = case_dir / f"{case}_seg.nii.gz"
    seg = np.asanyarray(nib.load(str(path)).dataobj).copy()
    seg[0, 0, 0] = 3  # a BraTS 2023 value in a BraTS 2020 dataset
    resave(path, seg)
    assert_clear_error(
        run_datalist(dataset, tmp_path), case, f"{case}_seg.nii.gz", "[3]", "brats2020"
    )


def test_empty_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clear_error(run_datalist(empty, tmp_path), str(empty), "no cases found")


def test_unknown_layout(tmp_path):
    case_dir = tmp_path / "data" / "patient1"
    case_dir.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(case_dir / "T1.nii.gz"))
    assert_clear_error(run_datalist(tmp_path / "data", tmp_path), "patient1", "supported layouts")


def test_msd_with_another_channel_order(small_datasets, tmp_path):
    dataset = tmp_path / "msd"
    shutil.copytree(small_datasets["msd"], dataset)
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["modality"] = {"0": "T1w", "1": "t1gd", "2": "T2w", "3": "FLAIR"}
    (dataset / "dataset.json").write_text(json.dumps(meta))
    assert_clear_error(run_datalist(dataset, tmp_path), "dataset.json", "modality order")
