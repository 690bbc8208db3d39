"""Bad input and faults: one clear line for every corruption tried, nothing lost, runs resume.

The corruptions and the table of their messages are scripts/robustness_table.py's; the checks
here run them through validation and through `monai.bundle run`, and kill runs with SIGKILL.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle.data.synthetic import make_demo_data
from bundle.io.checkpoints import state_digest
from bundle.io.outputs import expected_outputs, output_path
from scripts.robustness_table import (
    ACCEPTED,
    CORRUPTIONS,
    case_messages,
    corrupted_dataset,
    sform_only,
    table,
)
from tests.bundle_cli import (
    BUNDLE_ENV,
    assert_ok,
    assert_one_line_error,
    bundle_command,
    bundle_run,
    copy_cases,
    infer,
    inference_overrides,
    run_script,
    tiny_weights,
    train_overrides,
)
from tests.conftest import REPO


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory) -> tuple[Path, str]:
    """One good case and one case per corruption, in one BraTS 2020 folder."""
    return corrupted_dataset(tmp_path_factory.mktemp("corrupted"))


def test_every_corruption_gets_one_line_naming_case_and_file(corrupted):
    dataset, good = corrupted
    messages = case_messages(dataset)
    assert messages.pop(good) == ACCEPTED
    for corruption in CORRUPTIONS:
        message = messages.pop(corruption.name)
        if corruption.accepted:  # perhaps with a warning naming the case
            assert message.split(";")[0] == ACCEPTED, (corruption.name, message)
            continue
        assert message.startswith(f"case {corruption.name}: "), message
        assert "\n" not in message
        # the file named is the corrupted one (the extra file's own name for an extra file)
        named = re.search(r"file (\S+)", message).group(1)
        assert Path(named).parent == dataset / corruption.name, message
        assert Path(named).name.startswith(f"{corruption.name}_"), message
    assert not messages


def test_robustness_table_is_up_to_date(tmp_path):
    assert (REPO / "docs" / "robustness.md").read_text() == table(tmp_path), (
        "docs/robustness.md is stale: python -m scripts.robustness_table"
    )


@pytest.mark.slow
def test_inference_skips_every_corrupted_case_and_writes_the_good_one(corrupted, tmp_path):
    dataset, good = corrupted
    out = tmp_path / "out"
    result = infer(
        dataset, out, tiny_weights(tmp_path / "model.pt"), num_samples=2, quicklook="false"
    )
    log = result.stdout + result.stderr
    assert result.returncode == 1, log[-3000:]
    assert "Traceback" not in log
    bad = [c.name for c in CORRUPTIONS if not c.accepted]
    for name in bad:
        assert re.search(rf"skipped: case {name}: .*file {dataset / name}/{name}_", log), name
    assert f"{len(bad)} case(s) failed: " in log
    written = {p.name for p in out.iterdir()}
    accepted = [good, *(c.name for c in CORRUPTIONS if c.accepted)]
    assert {output_path(out, case, "pred").name for case in accepted} <= written
    assert not any(name.startswith(f"{case}_") for case in bad for name in written)


@pytest.mark.slow
def test_weights_of_another_network_stop_inference_with_one_line(small_datasets, tmp_path):
    weights = tiny_weights(tmp_path / "model.pt")
    overrides = inference_overrides(small_datasets["brats2020"], tmp_path / "out", weights)
    overrides["network_def#channels"] = "[16,32]"  # the file holds [8,16]
    result = bundle_run("inference", ["inference.yaml"], overrides)
    assert_one_line_error(
        result,
        f"checkpoint {weights} does not match network_def: ",
        "conv_in.conv.weight has shape (8, 5, 3, 3) in the file, (16, 5, 3, 3) in the network",
    )
    assert not list((tmp_path / "out").glob("*.nii.gz"))


@pytest.mark.slow
def test_training_stops_on_bad_input_with_one_line(small_datasets, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = bundle_run("training", ["train.yaml"], train_overrides(empty, tmp_path / "ckpt"))
    assert_one_line_error(result, f"dataset folder {empty}: no cases found")

    # a datalist naming a file that is gone
    dataset = tmp_path / "data"
    shutil.copytree(small_datasets["brats2020"], dataset)
    datalist = tmp_path / "datalist.json"
    assert_ok(run_script("datalist", "--dataset_dir", dataset, "--output", datalist))
    case = json.loads(datalist.read_text())["training"][0]
    Path(case["image"][3]).unlink()
    overrides = train_overrides(dataset, tmp_path / "ckpt", datalist_file=datalist)
    result = bundle_run("training", ["train.yaml"], overrides)
    assert_one_line_error(
        result, f"datalist file {datalist}: case {case['case_id']}: file {case['image'][3]}"
    )


@pytest.mark.slow
def test_nan_loss_stops_training_and_keeps_the_last_good_state(small_datasets, tmp_path):
    ckpt = tmp_path / "ckpt"
    overrides = train_overrides(
        small_datasets["brats2020"],
        ckpt,
        epochs=20,
        val_interval=100,
        checkpoint_interval=1,
        warmup_iterations=1,
        learning_rate=1e30,  # the first step blows the weights up; the next forward overflows
    )
    result = bundle_run("training", ["train.yaml"], overrides)
    log = result.stdout + result.stderr
    assert result.returncode == 1, log[-3000:]
    assert "Traceback" not in log
    found = re.search(r"loss became (NaN|Inf) at iteration (\d+); last good state saved in (\S+)$",
                      log, re.MULTILINE)  # fmt: skip
    assert found, log[-3000:]
    stopped_at = int(found.group(2))
    assert found.group(3) == str(ckpt / "last.pt")
    state = torch.load(ckpt / "last.pt", weights_only=False)
    # saved every iteration until the weights went bad: the one before the NaN loss
    assert state["trainer"]["iteration"] == stopped_at - 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert state["trainer"]["iteration"] < 20 * state["trainer"]["epoch_length"]

    # resuming that state into another network_def stops before any work, with one line
    result = bundle_run(
        "training", ["train.yaml"], {**overrides, "network_def#channels": "[16,32]"}
    )
    assert_one_line_error(
        result,
        f"checkpoint {ckpt / 'last.pt'} does not match network_def: conv_in.conv.weight has "
        "shape (8, 5, 3, 3) in the file, (16, 5, 3, 3) in the network",
    )


def killed_after(process: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` holds; fail if it ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    assert process.poll() is None, "finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()


@pytest.mark.slow
def test_training_killed_with_sigkill_resumes_from_the_saved_state(small_datasets, tmp_path):
    ckpt = tmp_path / "ckpt"
    last = ckpt / "last.pt"
    overrides = train_overrides(
        small_datasets["brats2020"], ckpt, epochs=1000, val_interval=1000, checkpoint_interval=0
    )
    command = bundle_command("training", ["train.yaml"], overrides)
    process = subprocess.Popen(command, cwd=REPO, env=BUNDLE_ENV, stderr=subprocess.PIPE, text=True)
    inodes = []

    def saved_twice() -> bool:  # a checkpoint, then at least one more epoch and its checkpoint
        if last.is_file() and last.stat().st_ino not in inodes:
            inodes.append(last.stat().st_ino)
        return len(inodes) >= 2

    killed_after(process, saved_twice)
    state = torch.load(last, weights_only=False)
    iteration, per_epoch = state["trainer"]["iteration"], state["trainer"]["epoch_length"]
    epoch = iteration // per_epoch  # saved at epoch ends only
    assert 0 < epoch < 1000
    stale = ckpt / f".tmp-{process.pid}-last.pt"  # what a kill during a save leaves
    stale.write_bytes(b"half a checkpoint")

    # the same command, told to stop one epoch later so that the test is short
    result = bundle_run("training", ["train.yaml"], {**overrides, "epochs": epoch + 1})
    assert_ok(result)
    log = result.stdout + result.stderr
    weights = state_digest(state["model"])
    assert (
        f"resumed from {last} at epoch {epoch} iteration {iteration} (weights model {weights})"
        in log
    ), log[-3000:]
    resumed = torch.load(last, weights_only=False)
    assert resumed["trainer"]["iteration"] == iteration + per_epoch
    assert not stale.exists()


def complete(path: Path) -> bool:
    """Whether a NIfTI reads to its last voxel."""
    np.asanyarray(nib.load(str(path)).dataobj)
    return True


@pytest.mark.slow
def test_inference_killed_with_sigkill_leaves_only_complete_files(small_datasets, tmp_path):
    dataset = tmp_path / "data"
    cases = copy_cases(small_datasets["brats2020"], dataset, copies=2)  # six cases
    out = tmp_path / "out"
    weights = tiny_weights(tmp_path / "model.pt")
    overrides = inference_overrides(dataset, out, weights, num_samples=2, quicklook="false")
    command = bundle_command("inference", ["inference.yaml"], overrides)
    process = subprocess.Popen(command, cwd=REPO, env=BUNDLE_ENV, stderr=subprocess.PIPE, text=True)
    killed_after(process, lambda: output_path(out, cases[0], "pred").is_file())
    # killed right after the first case's segmentation: perhaps before its Slicer file
    finished = all(output_path(out, cases[0], k).is_file() for k in expected_outputs(False))

    visible = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert visible and all(complete(p) for p in visible)  # no partial file under a real name
    assert not output_path(out, cases[-1], "pred").exists()
    mean = output_path(out, cases[-1], "mean")
    stale = mean.with_name(f".tmp-{process.pid}-{mean.name}")  # what a kill during a write leaves
    stale.write_bytes(b"half a NIfTI")

    result = infer(dataset, out, weights, num_samples=2, quicklook="false")
    assert_ok(result)
    # a case is skipped only if all its files were written, else it is done again
    assert (f"{cases[0]}: outputs exist" in result.stdout + result.stderr) == finished
    assert not stale.exists() and not any(p.name.startswith(".") for p in out.iterdir())
    # every output of every case, the Slicer file of the case killed after its NIfTIs included
    for case in cases:
        for key in expected_outputs(quicklook=False):
            assert output_path(out, case, key).is_file()
        for key in ("mean", "variance", "pred"):
            assert complete(output_path(out, case, key))


def renamed_copy(case_dir: Path, dataset: Path, name: str) -> Path:
    """A copy of a BraTS 2020 case folder as case ``name`` (folder and files renamed)."""
    copy = dataset / name
    shutil.copytree(case_dir, copy)
    for path in copy.iterdir():
        path.rename(path.with_name(path.name.replace(case_dir.name, name)))
    return copy


def test_a_header_whose_fields_disagree_is_read_by_one_rule_everywhere(small_datasets, tmp_path):
    source = sorted(p for p in small_datasets["brats2020"].iterdir() if p.is_dir())[0]
    dataset = tmp_path / "data"
    renamed_copy(source, dataset, "clean")
    odd = renamed_copy(source, dataset, "sformonly")
    for path in odd.iterdir():  # 1 mm sform, no qform, 2 mm pixdim: the sform is the geometry
        sform_only(path)
    out = tmp_path / "out"
    result = infer(dataset, out, tiny_weights(tmp_path / "model.pt"), num_samples=2)
    assert_ok(result)
    log = result.stdout + result.stderr
    assert f"case sformonly: file {odd}/sformonly_t1.nii.gz has an inconsistent header" in log
    assert "its sform is used" in log and "case clean: file" not in log
    clean, sform = (nib.load(output_path(out, c, "pred")) for c in ("clean", "sformonly"))
    np.testing.assert_allclose(sform.affine, nib.load(odd / "sformonly_t1.nii.gz").affine)
    np.testing.assert_allclose(sform.affine, clean.affine)
    np.testing.assert_array_equal(np.asanyarray(sform.dataobj), np.asanyarray(clean.dataobj))
    volumes = re.findall(r"(clean|sformonly): tumour ([0-9.]+) ml", log)
    assert len(volumes) == 2 and volumes[0][1] == volumes[1][1]
    # evaluation reads the same geometry, so it takes the bundle's own outputs
    result = run_script(
        "evaluate", "--predictions", out, "--dataset_dir", dataset, "--split", "all",
        "--output", tmp_path / "eval",
    )  # fmt: skip
    assert_ok(result)
    rows = list(csv.DictReader(open(tmp_path / "eval" / "cases.csv")))
    dice = {row["case"]: row["dice"] for row in rows if row["ensemble"] == "all"}
    assert dice["clean"] == dice["sformonly"]


INTENSITIES: dict[str, Callable[[np.ndarray, str], np.ndarray]] = {
    "clean": lambda data, modality: data,
    # z-scored over the brain already: the background is negative, not 0
    "zscored": lambda data, modality: (data - data[data > 0].mean()) / data[data > 0].std(),
    # a noise floor of 2 % of the maximum instead of exact zeros
    "noisy": lambda data, modality: (
        data + np.abs(np.random.default_rng(0).normal(0, 0.02 * data.max(), data.shape))
    ),
    # a 4 x 4 patch of 1e5 in one modality
    "hotspot": lambda data, modality: np.where(
        (modality == "t1ce") & np.pad(np.ones((4, 4, 1), bool), [(70, 70), (70, 70), (50, 45)]),
        1e5,
        data,
    ),
}
"""Intensities outside what the demo model was trained on, by case name (144 x 144 x 96)."""


def test_intensities_outside_the_training_range_give_the_clean_segmentation(tmp_path):
    """With the shipped demo weights: a case and copies of it whose intensities differ as real
    scans' do give (nearly) one segmentation, with a warning naming each odd case's file."""
    source = make_demo_data(str(tmp_path / "src"), 1, seed=0, shape=(144, 144, 96), start_index=31)
    dataset = tmp_path / "data"
    for name, change in INTENSITIES.items():
        case = renamed_copy(Path(source[0]), dataset, name)
        for modality in ("t1", "t1ce", "t2", "flair"):
            path = case / f"{name}_{modality}.nii.gz"
            image = nib.load(str(path))
            data = change(np.asanyarray(image.dataobj).astype(np.float32), modality)
            nib.save(nib.Nifti1Image(data.astype(np.float32), image.affine), str(path))
    out = tmp_path / "out"
    overrides = {"dataset_dir": dataset, "output_dir": out, "quicklook": "no"}  # 5 samples
    result = bundle_run("inference", ["inference.yaml"], overrides)
    assert_ok(result)
    log = result.stdout + result.stderr
    seg = {name: np.asanyarray(nib.load(output_path(out, name, "pred")).dataobj) > 0
           for name in INTENSITIES}  # fmt: skip
    label = np.asanyarray(nib.load(str(dataset / "clean" / "clean_seg.nii.gz")).dataobj) > 0
    clean = dice(seg["clean"], label)
    assert clean > 0.85  # the model does segment the case
    for name in ("zscored", "noisy", "hotspot"):
        # a noise floor changes the brain's voxels too: the shipped v model then grows the
        # tumour's edge (Dice to the label 0.81 against 0.87 clean, seeds 0 and 1; the x0 model
        # shipped before stayed within 0.05; docs/robustness.md)
        same, drop = (0.85, 0.08) if name == "noisy" else (0.9, 0.05)
        assert dice(seg[name], seg["clean"]) > same, name
        assert abs(dice(seg[name], label) - clean) < drop, name
        assert f"{dataset / name}/{name}_t1.nii.gz: outside the training data's range" in log
    assert f"{dataset / 'clean'}/clean_t1.nii.gz: outside" not in log
    assert "values up to 1e+05, clipped" in log


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def test_brain_outside_the_field_of_view_is_named(small_datasets, tmp_path):
    case = sorted(p for p in small_datasets["brats2020"].iterdir() if p.is_dir())[0]
    out = tmp_path / "out"
    result = infer(case, out, tiny_weights(tmp_path / "model.pt"), image_size=40, num_samples=2)
    assert_ok(result)
    found = re.search(
        rf"case {case.name}: the brain reaches beyond the central 40 x 40 mm the network sees: "
        r"([0-9.]+) % of its voxels are cut away",
        result.stdout,
    )
    assert found and float(found.group(1)) > 0, result.stdout[-3000:]
