"""`monai.bundle run training`: the loss falls, checkpoints are written, runs resume."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bundle.data.layouts import find_cases
from bundle.diffusion.ema import WeightAverage
from bundle.io.checkpoints import state_digest
from bundle.io.outputs import output_path
from bundle.workflow.configs import load_config
from tests.bundle_cli import (
    BUNDLE_ENV,
    assert_ok,
    assert_one_line_error,
    bundle_command,
    bundle_run,
    infer,
    train_overrides,
)
from tests.conftest import REPO, SMALL_SHAPE


def losses(log_dir) -> list[float]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [event.value for event in events.Scalars("train_loss")]


@pytest.mark.slow
def test_training_learns_checkpoints_and_resumes(small_datasets, tmp_path):
    ckpt = tmp_path / "ckpt"
    overrides = train_overrides(
        small_datasets["brats2020"],
        ckpt,
        epochs=12,
        val_interval=6,
        learning_rate=0.003,
        warmup_iterations=2,
        checkpoint_interval=5,
    )
    first = bundle_run("training", ["train.yaml"], overrides)
    assert_ok(first)
    assert (ckpt / "last.pt").is_file() and (ckpt / "model.pt").is_file()
    state = torch.load(ckpt / "last.pt", weights_only=False)
    assert set(state) == {
        "model", "optimizer", "lr_scheduler", "settings", "best_model", "trainer"
    }  # fmt: skip
    # the best validation score is training state, as the settings of the weights are
    assert state["best_model"]["best"] is not None
    default = load_config("train.yaml").get("prediction_type")
    assert state["settings"]["scheduler"]["prediction_type"] == default
    assert torch.load(ckpt / "model.pt", weights_only=True)["settings"] == state["settings"]
    iterations = state["trainer"]["iteration"]
    per_epoch = state["trainer"]["epoch_length"]
    assert iterations == 12 * per_epoch and per_epoch > 0
    assert "val_mean_dice" in first.stdout + first.stderr

    loss = losses(ckpt / "runs")
    assert len(loss) == iterations
    k = max(3, len(loss) // 4)
    assert sum(loss[-k:]) / k < 0.7 * sum(loss[:k]) / k, loss

    # a second run of the same command with more epochs continues from the saved iteration
    weights = {k: v.clone() for k, v in state["model"].items()}
    shutil.rmtree(ckpt / "runs")
    second = bundle_run(
        "training", ["train.yaml"], {**overrides, "epochs": 14, "val_interval": 100}
    )
    assert_ok(second)
    assert f"resumed from {ckpt / 'last.pt'} at epoch 12" in second.stdout + second.stderr
    resumed = torch.load(ckpt / "last.pt", weights_only=False)
    assert resumed["trainer"]["iteration"] == iterations + 2 * per_epoch
    assert len(losses(ckpt / "runs")) == 2 * per_epoch  # only the new iterations ran
    assert any(not torch.equal(weights[k], resumed["model"][k]) for k in weights)
    # fewer epochs than val_interval still validate once, at the end, and the run reports
    assert "training report: trained epochs 13-14" in second.stdout + second.stderr
    stats = json.loads((ckpt / "train_stats.json").read_text())
    assert stats["epochs_run"] == 2 and stats["eval"]["best_metric_epoch"] == 14

    # the same command once more: nothing left to train, and it says so
    third = bundle_run("training", ["train.yaml"], {**overrides, "epochs": 14, "val_interval": 100})
    assert_ok(third)
    assert "trained nothing: the run was already at epoch 14 of 14" in third.stdout + third.stderr


@pytest.mark.slow
def test_multi_gpu_config_runs_two_gloo_processes(small_datasets, tmp_path):
    ckpt = tmp_path / "ckpt"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
    launcher.append("--nproc_per_node=2")
    result = bundle_run(
        "training",
        ["train.yaml", "multi_gpu_train.yaml"],
        # with the weight average on, which must average the DDP-wrapped network's module
        train_overrides(small_datasets["brats2020"], ckpt, epochs=2, val_interval=1, ema=True),
        launcher=launcher,
    )
    assert_ok(result)
    output = result.stdout + result.stderr
    # both ranks trained to the end; only rank 0 logged the validation metrics
    assert output.count("SupervisedTrainer - INFO - Engine run finished") == 2, output[-3000:]
    assert output.count("Metrics -- val_mean_dice") == 2  # one line per validation, rank 0
    state = torch.load(ckpt / "last.pt", weights_only=False)
    assert state["trainer"]["max_epochs"] == 2
    assert not any(key.startswith("module.") for key in state["model"])  # loads without DDP
    assert state["ema"].keys() == state["model"].keys()


@pytest.mark.slow
def test_weight_average_and_learned_variance_switches(small_datasets, tmp_path):
    """Both of the paper code's extras on: the weight average is validated and shipped, and the
    network that also learns its variance serves inference (the DDPM sampler's use of the
    variance is checked against exact answers in test_sampling.py)."""
    ckpt = tmp_path / "ckpt"
    overrides = train_overrides(
        small_datasets["brats2020"],
        ckpt,
        epochs=3,
        val_interval=3,  # one validation, at the end: model.pt holds the final average
        learning_rate=0.003,
        warmup_iterations=2,
        ema=True,
        ema_decay=0.5,
        learn_sigma=True,
        prediction_type="epsilon",
    )
    run = bundle_run("training", ["train.yaml"], overrides)
    assert_ok(run)
    assert "val_mean_dice" in run.stdout + run.stderr
    state = torch.load(ckpt / "last.pt", weights_only=False)
    assert set(state) == {
        "model", "ema", "optimizer", "lr_scheduler", "settings", "best_model", "trainer"
    }  # fmt: skip
    shipped = torch.load(ckpt / "model.pt", weights_only=False)["model"]
    # the averaged weights are what validation scored and what model.pt ships
    assert all(torch.equal(shipped[k], state["ema"][k]) for k in shipped)
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in shipped)
    assert shipped["out.2.conv.weight"].shape[0] == 2  # prediction and variance of one region

    case = sorted(p for p in small_datasets["brats2020"].iterdir() if p.is_dir())[0]
    result = infer(
        case, tmp_path / "out", ckpt / "model.pt", learn_sigma=True, num_samples=2, quicklook=False
    )
    assert_ok(result)
    mean = nib.load(output_path(tmp_path / "out", case.name, "mean")).get_fdata()
    assert mean.shape == SMALL_SHAPE and 0 <= mean.min() <= mean.max() <= 1


@pytest.mark.slow
def test_a_network_trained_on_neighbouring_slices_serves_inference(small_datasets, tmp_path):
    """2.5-D: the weights say which neighbours they were trained on; inference with them
    writes the maps in the input's grid, and inference without them stops with one line."""
    ckpt = tmp_path / "ckpt"
    context = {"context_slices": 1, "context_step": 2}
    overrides = train_overrides(
        small_datasets["brats2020"], ckpt, epochs=2, val_interval=2, **context
    )
    assert_ok(bundle_run("training", ["train.yaml"], overrides))
    shipped = torch.load(ckpt / "model.pt", weights_only=True)
    assert shipped["settings"]["slice_context"] == [1, 2]
    assert shipped["model"]["conv_in.conv.weight"].shape[1] == 1 + 4 * 3

    case = sorted(p for p in small_datasets["brats2020"].iterdir() if p.is_dir())[0]
    trained = {**context, "prediction_type": "v_prediction", "quicklook": False}
    run = infer(case, tmp_path / "out", ckpt / "model.pt", **trained)
    assert_ok(run)
    mean = nib.load(output_path(tmp_path / "out", case.name, "mean"))
    assert mean.shape == SMALL_SHAPE and 0 <= mean.get_fdata().min() <= mean.get_fdata().max() <= 1
    assert np.allclose(mean.affine, nib.load(next(case.glob("*_t1.nii.gz"))).affine)
    flat = infer(case, tmp_path / "flat", ckpt / "model.pt", **{**trained, "context_slices": 0})
    assert_one_line_error(flat, str(ckpt / "model.pt"))
    assert not (tmp_path / "flat" / case.name).exists()


def test_weight_average_follows_the_network():
    network = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(network.weight)
    average = WeightAverage(network, enabled="true", decay=0.25)
    engine = Engine(lambda engine, batch: network.weight.data.fill_(float(batch)))
    average.attach(engine)
    engine.run([4.0, 4.0, 8.0], max_epochs=1)
    # the decay warms up as (1 + n) / (10 + n): 2/11, then it is capped at 0.25
    assert average.model is not network
    expected = 0.0
    for n, value in enumerate([4.0, 4.0, 8.0], start=1):
        decay = min(0.25, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * value
    assert average.model.weight.item() == pytest.approx(expected)
    assert average.model.weight.item() != pytest.approx(8.0)
    off = WeightAverage(network)
    assert off.model is network and off.save_dict == {}


@pytest.mark.parametrize(("warmup", "after_steps"), [(100, [0.01, 0.0199, 0.0298]), (0, [1, 1, 1])])
def test_learning_rate_warm_up_or_none(warmup, after_steps):
    """The rate rises linearly from 1% over warmup_iterations; with none it is the full rate
    throughout (LinearLR alone would keep a start factor for ever when total_iters is 0)."""
    parser = load_config("train.yaml", {"warmup_iterations": warmup})
    scheduler = parser.get_parsed_content("lr_scheduler")
    rates = []
    for _ in after_steps:
        rates.append(scheduler.optimizer.param_groups[0]["lr"] / parser["learning_rate"])
        scheduler.optimizer.step()
        scheduler.step()
    assert rates == pytest.approx(after_steps)


def val_dice(log: str, metric: str = "val_mean_dice") -> list[float]:
    """The values of a validation metric that a training log reports, in order."""
    return [float(v) for v in re.findall(rf"Metrics -- .*?{metric}: ([0-9.]+)", log)]


def test_a_resumed_training_replaces_the_best_model_only_with_a_better_one(
    small_datasets, tmp_path
):
    ckpt = tmp_path / "ckpt"
    # a noise-predicting network draws varied masks from the start (x0-predicting ones draw
    # empty masks until they have learned the tiny test tumours)
    overrides = train_overrides(
        small_datasets["brats2020"], ckpt, epochs=1, val_interval=1, prediction_type="epsilon"
    )
    first = bundle_run("training", ["train.yaml"], overrides)
    assert_ok(first)
    state = torch.load(ckpt / "last.pt", weights_only=False)
    best = state["best_model"]["best"]
    assert best > 0  # the first model's masks overlap the tumour
    shipped = state_digest(torch.load(ckpt / "model.pt", weights_only=True)["model"])
    # the run goes on from worse weights (as after a bad stretch): a network whose noise
    # prediction is so large everywhere that every mask it draws is empty
    state["model"]["out.2.conv.weight"].zero_()
    state["model"]["out.2.conv.bias"].fill_(100.0)
    torch.save(state, ckpt / "last.pt")
    second = bundle_run("training", ["train.yaml"], {**overrides, "epochs": 2})
    assert_ok(second)
    (resumed,) = val_dice(second.stdout + second.stderr)
    assert resumed < best, (resumed, best)  # its first validation is worse than the best
    # validation also scores each sample alone: between 0 and 1 for the first model's varied
    # masks, and 0, as the ensemble, when every mask is empty
    (first_samples,) = val_dice(first.stdout + first.stderr, "val_sample_dice")
    assert 0 < first_samples <= 1
    assert val_dice(second.stdout + second.stderr, "val_sample_dice") == [resumed] == [0.0]
    assert state_digest(torch.load(ckpt / "model.pt", weights_only=True)["model"]) == shipped
    assert torch.load(ckpt / "last.pt", weights_only=False)["best_model"]["best"] == best


def test_switch_words_and_fewer_epochs_than_trained(small_datasets, tmp_path):
    ckpt = tmp_path / "ckpt"
    overrides = train_overrides(
        small_datasets["brats2020"],
        ckpt,
        epochs=2,
        val_interval=100,
        learn_sigma="false",  # as typed: the string "false"
        ema="no",
        augment="off",
        amp="0",
        validate_voxels="yes",
    )
    assert_ok(bundle_run("training", ["train.yaml"], overrides))
    state = torch.load(ckpt / "last.pt", weights_only=False)
    assert state["model"]["out.2.conv.weight"].shape[0] == 1  # no learned variance channel
    assert "ema" not in state
    result = bundle_run("training", ["train.yaml"], {**overrides, "epochs": 1})
    assert_one_line_error(
        result, f"--epochs 1 is below the 2 epochs that {ckpt / 'last.pt'} has trained already"
    )


def test_two_labelled_cases_train_or_say_why_not(small_datasets, tmp_path):
    dataset = tmp_path / "data"
    for case in sorted(p for p in small_datasets["brats2020"].iterdir() if p.is_dir())[:2]:
        shutil.copytree(case, dataset / case.name)
    ckpt = tmp_path / "ckpt"
    overrides = train_overrides(dataset, ckpt, epochs=1, val_interval=1)
    result = bundle_run(
        "training", ["train.yaml"], {**overrides, "num_folds": 5, "test_fraction": 0.2}
    )
    assert_one_line_error(
        result,
        "the split has 0 training, 1 validation, 1 testing case(s)",
        "lower --test_fraction or --num_folds",
    )
    result = bundle_run("training", ["train.yaml"], overrides)  # 2 folds, no test cases
    assert_ok(result)
    assert "1 training, 1 validation, 0 testing cases" in result.stdout
    assert (ckpt / "model.pt").is_file()


def test_datalist_paths_are_read_from_its_folder_and_each_case_once(small_datasets, tmp_path):
    dataset = tmp_path / "data"
    shutil.copytree(small_datasets["brats2020"], dataset)
    lists = tmp_path / "lists"
    lists.mkdir()

    def relative(case: dict) -> dict:  # paths from the datalist's folder, as MONAI writes them
        paths = {k: case[k] for k in ("image", "label")}
        paths["image"] = [os.path.relpath(p, lists) for p in paths["image"]]
        paths["label"] = os.path.relpath(paths["label"], lists)
        return dict(case, **paths)

    cases = [relative(case) for case in find_cases(dataset)]
    datalist = lists / "datalist.json"
    datalist.write_text(json.dumps({"training": cases[:2], "validation": cases[2:]}))
    overrides = train_overrides(
        dataset, tmp_path / "ckpt", datalist_file=datalist, epochs=1, val_interval=100
    )
    result = bundle_run("training", ["train.yaml"], overrides)  # run from the repository
    assert_ok(result)
    assert "2 training, 1 validation, 0 testing cases" in result.stdout
    twice = lists / "twice.json"
    twice.write_text(json.dumps({"training": cases[:2], "validation": cases[1:]}))
    result = bundle_run("training", ["train.yaml"], {**overrides, "datalist_file": twice})
    assert_one_line_error(
        result, f"datalist file {twice} lists case {cases[1]['case_id']} in training and validation"
    )


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stopped_training_saves_its_state_first(small_datasets, tmp_path, stop):
    ckpt = tmp_path / "ckpt"
    last = ckpt / "last.pt"
    overrides = train_overrides(
        small_datasets["brats2020"], ckpt, epochs=1000, val_interval=1000, checkpoint_interval=0
    )
    process = subprocess.Popen(
        bundle_command("training", ["train.yaml"], overrides),
        cwd=REPO,
        env=BUNDLE_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not last.is_file():  # training runs: its first epoch is saved
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(process.pid, stop)
    log = process.communicate(timeout=300)[0]
    assert process.returncode == -stop, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    found = re.search(
        rf"stopped by {stop.name} at iteration (\d+); state saved in {last}, rerun to resume", log
    )
    assert found, log[-3000:]
    assert torch.load(last, weights_only=False)["trainer"]["iteration"] == int(found.group(1))


RACE = """
import logging, os, signal, sys
import torch
from ignite.engine import Engine
from bundle.workflow.handlers import ResumableCheckpoint

engine = Engine(lambda engine, batch: 0.0)
ResumableCheckpoint(sys.argv[1], {"model": torch.nn.Linear(1, 1)}, interval=0).attach(engine)


class SignalAfterTheCheck(logging.Handler):
    # ignite logs "Epoch[1] Complete" just after its last look at the terminate flag
    def emit(self, record):
        if record.getMessage().startswith("Epoch[1] Complete"):
            os.kill(os.getpid(), signal.SIGINT)


engine.logger.setLevel(logging.INFO)
engine.logger.addHandler(SignalAfterTheCheck())
engine.run([0], max_epochs=3)
"""


def test_a_signal_just_after_an_epochs_last_check_still_saves_and_stops(tmp_path):
    """A stop signal that lands after ignite's end-of-epoch check ends the run as completed,
    not terminated; the state is saved and the process still ends by the signal."""
    process = subprocess.run(
        [sys.executable, "-c", RACE, str(tmp_path)],
        cwd=REPO,
        env=BUNDLE_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == -signal.SIGINT, process.stderr[-3000:]
    assert f"stopped by SIGINT at iteration 1; state saved in {tmp_path / 'last.pt'}" in (
        process.stderr
    )
    assert torch.load(tmp_path / "last.pt", weights_only=False)["trainer"]["iteration"] == 1
