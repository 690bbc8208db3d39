"""`monai.bundle run training`: the loss falls, checkpoints are written, runs resume."""

from __future__ import annotations

import shutil
import sys

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.bundle_cli import assert_ok, bundle_run, train_overrides


def losses(log_dir) -> list[float]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [event.value for event in events.Scalars("train_loss")]


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
    assert set(state) == {"model", "optimizer", "lr_scheduler", "trainer"}
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


def test_multi_gpu_config_runs_two_gloo_processes(small_datasets, tmp_path):
    ckpt = tmp_path / "ckpt"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
    launcher.append("--nproc_per_node=2")
    result = bundle_run(
        "training",
        ["train.yaml", "multi_gpu_train.yaml"],
        train_overrides(small_datasets["brats2020"], ckpt, epochs=2, val_interval=1),
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
