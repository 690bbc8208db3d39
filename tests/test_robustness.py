"""Bad input and faults: one clear line for every corruption tried, nothing lost, runs resume.

The corruptions and the table of their messages are scripts/robustness_table.py's; the checks
here run them through validation and through `monai.bundle run`, and kill runs with SIGKILL.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle.io.checkpoints import state_digest
from bundle.io.outputs import output_path
from scripts.robustness_table import ACCEPTED, CORRUPTIONS, case_messages, corrupted_dataset, table
from tests.bundle_cli import (
    BUNDLE_ENV,
    assert_ok,
    bundle_command,
    bundle_run,
    infer,
    inference_overrides,
    tiny_weights,
    train_overrides,
)
from tests.conftest import REPO


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory) -> tuple[Path, str]:
    """One good case and one case per corruption, in one BraTS 2020 folder."""
    return corrupted_dataset(tmp_path_factory.mktemp("corrupted"))


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """A failed bundle run whose only complaint is one ``error:`` line holding ``fragments``."""
    log = result.stdout + result.stderr
    assert result.returncode == 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    for fragment in fragments:
        assert fragment in line, line
    return line


def test_every_corruption_gets_one_line_naming_case_and_file(corrupted):
    dataset, good = corrupted
    messages = case_messages(dataset)
    assert messages.pop(good) == ACCEPTED
    for corruption in CORRUPTIONS:
        message = messages.pop(corruption.name)
        if corruption.accepted:
            assert message == ACCEPTED, (corruption.name, message)
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
        "docs/robustness.md is stale: python scripts/robustness_table.py"
    )


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


def test_training_stops_on_bad_input_with_one_line(small_datasets, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = bundle_run("training", ["train.yaml"], train_overrides(empty, tmp_path / "ckpt"))
    assert_one_line_error(result, f"dataset folder {empty}: no cases found")

    # a datalist naming a file that is gone
    dataset = tmp_path / "data"
    shutil.copytree(small_datasets["brats2020"], dataset)
    datalist = tmp_path / "datalist.json"
    assert_ok(
        subprocess.run(
            [sys.executable, "scripts/datalist.py", "--dataset_dir", dataset, "--output", datalist],
            cwd=REPO,
            capture_output=True,
            text=True,
            env=BUNDLE_ENV,
        )
    )
    case = json.loads(datalist.read_text())["training"][0]
    Path(case["image"][3]).unlink()
    overrides = train_overrides(dataset, tmp_path / "ckpt", datalist_file=datalist)
    result = bundle_run("training", ["train.yaml"], overrides)
    assert_one_line_error(
        result, f"datalist file {datalist}: case {case['case_id']}: file {case['image'][3]}"
    )


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


def test_inference_killed_with_sigkill_leaves_only_complete_files(small_datasets, tmp_path):
    dataset = tmp_path / "data"
    for k in range(2):  # six cases
        for case_dir in small_datasets["brats2020"].iterdir():
            copy = dataset / f"{case_dir.name}_{k}"
            shutil.copytree(case_dir, copy)
            for path in copy.iterdir():
                path.rename(path.with_name(path.name.replace(case_dir.name, copy.name)))
    cases = sorted(p.name for p in dataset.iterdir())
    out = tmp_path / "out"
    weights = tiny_weights(tmp_path / "model.pt")
    overrides = inference_overrides(dataset, out, weights, num_samples=2, quicklook="false")
    command = bundle_command("inference", ["inference.yaml"], overrides)
    process = subprocess.Popen(command, cwd=REPO, env=BUNDLE_ENV, stderr=subprocess.PIPE, text=True)
    killed_after(process, lambda: output_path(out, cases[0], "pred").is_file())

    visible = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert visible and all(complete(p) for p in visible)  # no partial file under a real name
    assert not output_path(out, cases[-1], "pred").exists()
    mean = output_path(out, cases[-1], "mean")
    stale = mean.with_name(f".tmp-{process.pid}-{mean.name}")  # what a kill during a write leaves
    stale.write_bytes(b"half a NIfTI")

    result = infer(dataset, out, weights, num_samples=2, quicklook="false")
    assert_ok(result)
    assert f"{cases[0]}: outputs exist" in result.stdout + result.stderr
    assert not stale.exists() and not any(p.name.startswith(".") for p in out.iterdir())
    for case in cases:
        for key in ("mean", "variance", "pred"):
            assert complete(output_path(out, case, key))
