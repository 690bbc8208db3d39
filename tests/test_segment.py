"""scripts/segment.py: one case from four arbitrarily named files, through inference.yaml."""

from __future__ import annotations

import ast
import shutil

import nibabel as nib
import numpy as np
import pytest

from bundle.io.outputs import output_path
from scripts.segment import segment
from tests.bundle_cli import TINY_DIFFUSION_NET, assert_one_line_error, run_script
from tests.test_inference import tiny_weights

pytestmark = pytest.mark.slow  # every test here runs the bundle end to end

MODALITIES = ("t1", "t1ce", "t2", "flair")


def test_segment_one_case_from_four_files(small_datasets, tmp_path):
    case = sorted(p for p in small_datasets["brats2020"].iterdir() if p.is_dir())[0]
    files = {}
    for modality in MODALITIES:  # named as an export from a viewer might name them
        files[modality] = tmp_path / f"scan {modality.upper()}.nii.gz"
        shutil.copy(case / f"{case.name}_{modality}.nii.gz", files[modality])
    out = tmp_path / "out"
    tiny = {key: ast.literal_eval(value) for key, value in TINY_DIFFUSION_NET.items()}
    entry = segment(
        **{m: str(p) for m, p in files.items()},
        output_dir=str(out),
        num_samples=2,
        ckpt_path=str(tiny_weights(tmp_path / "model.pt")),
        image_size=64,
        sampling_steps=2,
        prediction_type="epsilon",
        quicklook=False,
        **tiny,
    )
    name = entry["case_id"]
    assert name == "scan T1"  # after the t1 file
    reference = nib.load(str(files["t1"]))
    for key in ("mean", "variance", "pred"):
        image = nib.load(str(output_path(out, name, key)))
        assert image.shape == reference.shape
        np.testing.assert_allclose(image.affine, reference.affine, atol=1e-4)
    assert output_path(out, name, "seg_nrrd").is_file()


def test_a_missing_file_is_one_error_line_and_exit_2(small_datasets, tmp_path):
    case = sorted(p for p in small_datasets["brats2020"].iterdir() if p.is_dir())[0]
    args = [f"--{m}={case / f'{case.name}_{m}.nii.gz'}" for m in MODALITIES]
    missing = tmp_path / "no_flair.nii.gz"
    args[-1] = f"--flair={missing}"
    result = run_script("segment", *args, f"--output_dir={tmp_path}")
    assert_one_line_error(result, str(missing), returncode=2)
