"""Inference outputs through `monai.bundle run inference` and scripts/segment.py: no input is ever
overwritten, a case is done only when all its files are, a case's files are one run's set, a
dataset folder's strays and outputs are not read as cases, and runs sharing a folder share its
cases."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np

from bundle.data.layouts import find_cases
from bundle.io.outputs import OUTPUT_NAMES, expected_outputs, input_files, output_path
from tests.bundle_cli import (
    BUNDLE_ENV,
    assert_ok,
    assert_one_line_error,
    bundle_command,
    copy_cases,
    infer,
    inference_overrides,
    run_script,
    tiny_weights,
)
from tests.conftest import REPO

SLICER_LABELMAP = re.compile(r"(\b|_)[Ss]eg(\b|_)")
"""3D Slicer loads a volume whose name (less its extension) matches this as a labelmap."""


def test_output_names_cannot_be_input_names_and_are_documented(small_datasets):
    for root in small_datasets.values():
        for case in find_cases(root):
            inputs = {path.name for path in input_files(case)}
            outputs = {output_path(root, case["case_id"], key).name for key in OUTPUT_NAMES}
            assert not inputs & outputs, inputs & outputs
    segmentation = OUTPUT_NAMES["pred"].format(case="c").removesuffix(".nii.gz")
    assert SLICER_LABELMAP.search(segmentation)
    assert not any(
        SLICER_LABELMAP.search(OUTPUT_NAMES[key].format(case="c").removesuffix(".nii.gz"))
        for key in ("mean", "variance", "samples")
    )
    assert OUTPUT_NAMES["seg_nrrd"].endswith(".seg.nrrd")  # a Slicer Segmentation
    readme = (REPO / "README.md").read_text()
    for name in OUTPUT_NAMES.values():
        assert f"`{name}`" in readme, name


def one_case(small_datasets, tmp_path) -> tuple[os.PathLike, str]:
    """A copy of a BraTS 2020 case folder (its label is ``<case>_seg.nii.gz``)."""
    source = sorted(p for p in small_datasets["brats2020"].iterdir() if p.is_dir())[0]
    case = tmp_path / "data" / source.name
    shutil.copytree(source, case)
    return case, source.name


def test_an_output_folder_holding_an_input_is_refused(small_datasets, tmp_path):
    case, name = one_case(small_datasets, tmp_path)
    label = case / f"{name}_seg.nii.gz"
    before = {path.name: path.read_bytes() for path in case.iterdir()}
    weights = tiny_weights(tmp_path / "model.pt")
    result = infer(case, case, weights, num_samples=2, quicklook="false")
    assert_one_line_error(result, f"output folder {case} holds input file {case}/{name}_t1.nii.gz")
    files = [case / f"{name}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")]
    result = run_script(
        "segment",
        *(f"--{m}={f}" for m, f in zip(("t1", "t1ce", "t2", "flair"), files, strict=True)),
        f"--output_dir={case}",
        f"--ckpt_path={weights}",
    )
    assert_one_line_error(result, f"output folder {case} holds input file", returncode=2)
    assert {path.name: path.read_bytes() for path in case.iterdir()} == before
    assert label.is_file()


def test_a_case_stopped_between_its_files_is_done_again(small_datasets, tmp_path):
    dataset = tmp_path / "data"
    shutil.copytree(small_datasets["brats2020"], dataset)
    cases = sorted(p.name for p in dataset.iterdir())
    weights = tiny_weights(tmp_path / "model.pt")
    out = tmp_path / "out"
    assert_ok(infer(dataset, out, weights, num_samples=2))
    # what a kill after the first case's NIfTIs leaves: no Slicer file, no quick-look
    output_path(out, cases[0], "seg_nrrd").unlink()
    output_path(out, cases[0], "quicklook").unlink()
    written = {case: output_path(out, case, "mean").stat().st_mtime_ns for case in cases}
    result = infer(dataset, out, weights, num_samples=2)
    assert_ok(result)
    log = result.stdout + result.stderr
    assert f"{cases[0]}: outputs exist" not in log
    for case in cases[1:]:
        assert f"{case}: outputs exist" in log
        assert output_path(out, case, "mean").stat().st_mtime_ns == written[case]
    for key in expected_outputs(quicklook=True):
        assert output_path(out, cases[0], key).is_file()


def test_overwrite_leaves_one_run_s_files_and_evaluation_never_mixes_runs(small_datasets, tmp_path):
    case, name = one_case(small_datasets, tmp_path)
    weights = tiny_weights(tmp_path / "model.pt")
    out = tmp_path / "out"
    assert_ok(infer(case, out, weights, num_samples=2, quicklook="false", save_samples="true"))
    samples = output_path(out, name, "samples")
    earlier = samples.read_bytes()
    assert_ok(infer(case, out, weights, num_samples=2, quicklook="no", overwrite="yes", seed=1))
    assert not samples.exists()  # the earlier run's samples went with its other files
    # samples an older version left beside newer maps: evaluate.py refuses to mix them
    samples.write_bytes(earlier)
    result = run_script(
        "evaluate",
        f"--predictions={out}",
        f"--dataset_dir={case.parent}",
        "--split=all",
        f"--output={tmp_path / 'eval'}",
    )
    assert_one_line_error(
        result,
        f"case {name}: file {samples} is not from the run that wrote",
        "--overwrite true",
        returncode=2,
    )


def test_stray_folders_are_skipped_and_outputs_inside_the_dataset_are_not_read(
    small_datasets, tmp_path
):
    dataset = tmp_path / "data"
    shutil.copytree(small_datasets["brats2020"], dataset)
    cases = sorted(p.name for p in dataset.iterdir())
    stray = dataset / f"{cases[0]} (copy)"  # a copy keeps the original's file names
    shutil.copytree(dataset / cases[0], stray)
    out = dataset / "predictions"
    weights = tiny_weights(tmp_path / "model.pt")
    for _ in range(2):  # the second run finds the first one's outputs inside the dataset
        result = infer(dataset, out, weights, num_samples=2, quicklook="false")
        assert_ok(result)
        log = result.stdout + result.stderr
        assert log.count(f"skipped folder {stray}: not a case") == 1
        assert "skipped folder" not in log.replace(f"skipped folder {stray}", "")
    for case in cases:
        assert output_path(out, case, "pred").is_file()
    # and a training datalist of the folder holds the three cases
    result = run_script("datalist", "--dataset_dir", dataset, "--output", tmp_path / "d.json")
    assert_ok(result)
    assert "1 training, 1 validation, 1 testing cases" in result.stdout


HOLD_LOCK = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, str(os.getpid()).encode())
    print("held", flush=True)
    time.sleep(600)
    """
)
"""Another run holding a case's lock file (an flock, as inference takes it)."""


def test_a_case_another_run_holds_is_left_to_it_and_dead_runs_locks_are_not(
    small_datasets, tmp_path
):
    dataset = tmp_path / "data"
    shutil.copytree(small_datasets["brats2020"], dataset)
    cases = sorted(p.name for p in dataset.iterdir())
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out / f".lock-{cases[1]}")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        dead = out / f".lock-{cases[2]}"  # a killed run's lock: the file, no process
        dead.write_text("999999")
        result = infer(dataset, out, tiny_weights(tmp_path / "model.pt"), num_samples=2)
    finally:
        holder.kill()
        holder.wait()
    assert_ok(result)
    assert f"{cases[1]}: being written by process {holder.pid}, skipped" in result.stdout
    assert not output_path(out, cases[1], "pred").exists()
    for case in (cases[0], cases[2]):
        assert output_path(out, case, "pred").is_file()
    assert not dead.exists()


def test_two_runs_on_one_folder_compute_each_case_once(small_datasets, tmp_path):
    dataset = tmp_path / "data"
    cases = copy_cases(small_datasets["brats2020"], dataset, copies=2)  # six cases
    out = tmp_path / "out"
    weights = tiny_weights(tmp_path / "model.pt")
    command = bundle_command(
        "inference",
        ["inference.yaml"],
        inference_overrides(dataset, out, weights, num_samples=4, quicklook="false"),
    )
    runs = [
        subprocess.Popen(
            command,
            cwd=REPO,
            env=BUNDLE_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    logs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], logs
    computed = [case for log in logs for case in re.findall(r"- (\S+): tumour ", log)]
    assert sorted(computed) == cases  # each case once, by one run or the other
    for case in cases:
        seg = nib.load(output_path(out, case, "pred"))
        assert np.asanyarray(seg.dataobj).shape == seg.shape
