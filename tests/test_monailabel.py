"""The bundle as MONAI Label 0.8.5's monaibundle app runs it: BundleInferTask and BundleTrainTask
on a copy of the bundle folder, with each case one 4-D NIfTI as MONAI Label's datastore has it."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import monai.bundle
import nibabel as nib
import numpy as np
import pytest
import torch

from bundle.ensemble.outputs import SEGMENTATION_THRESHOLD
from bundle.io.outputs import output_path
from scripts.stack_modalities import stack_modalities
from tests.monailabel_app import (
    MODEL,
    make_app_bundle,
    model_weights,
    write_torchvision_stand_in,
)

pytestmark = pytest.mark.slow  # every test here runs the bundle end to end


@pytest.fixture(scope="module")
def monailabel(tmp_path_factory: pytest.TempPathFactory):
    """MONAI Label importable (the README's test command installs it with --no-deps, from
    requirements-monailabel.txt), with the torchvision stand-in when torchvision is missing."""
    stand_in = importlib.util.find_spec("torchvision") is None
    with pytest.MonkeyPatch.context() as patch:
        if stand_in:
            patch.syspath_prepend(str(write_torchvision_stand_in(tmp_path_factory.mktemp("tv"))))
        yield
    if stand_in:  # gone with the module: later tests (the server's) find no torchvision
        for name in ("torchvision.utils", "torchvision"):
            sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def app_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_app_bundle(tmp_path_factory.mktemp("monaibundle") / MODEL)


def _cases(dataset: Path) -> list[Path]:
    return sorted(p for p in dataset.iterdir() if p.is_dir())


def test_infer_task_returns_the_segmentation_with_mean_and_variance(
    monailabel, app_bundle, small_datasets, tmp_path
):
    from monailabel.tasks.infer.basic_infer import CallBackTypes
    from monailabel.tasks.infer.bundle import BundleInferTask

    case = _cases(small_datasets["brats2020"])[0]
    [image] = stack_modalities(str(case), str(tmp_path))  # MONAI Label's 4-D input
    task = BundleInferTask(str(app_bundle), {})
    assert task.is_valid()
    assert task.labels == {"whole tumour": 1}  # from the metadata's pred channel_def
    # the ensemble's size and steps are options of each request (displayable_configs)
    assert {"num_samples": 2, "sampling_steps": 2}.items() <= task.config().items()

    after_post = {}

    def keep(data: dict) -> dict:
        after_post.update(data)
        return data

    request = {"image": str(image), "device": "cpu", "num_samples": 3, "sampling_steps": 4}
    label_file, result = task(request, callbacks={CallBackTypes.POST_TRANSFORMS: keep})
    inferer = task.bundle_config.get_parsed_content("inferer")
    assert (inferer.num_samples, len(inferer.sampler.timesteps)) == (3, 4)  # the request's
    reference = nib.load(str(image))
    label = nib.load(label_file)
    seg = np.asanyarray(label.dataobj)
    assert seg.shape == reference.shape[:3]
    np.testing.assert_allclose(label.affine, reference.affine, atol=1e-4)
    assert set(np.unique(seg)) == {0, 1}
    # the label file is the ensemble mean thresholded at the shipped threshold less its small
    # parts, as the bundle's own inference writes it; mean and variance are still there, in the
    # input's geometry
    mean, variance = after_post["mean"], after_post["variance"]
    assert mean.shape == variance.shape == (1, *reference.shape[:3])
    above = (mean[0] > SEGMENTATION_THRESHOLD).numpy()
    assert not (seg.astype(bool) & ~above).any() and seg.sum() > 0.99 * above.sum()
    assert float(variance.max()) > 0 and float(variance.min()) >= 0
    assert result["label_names"] == {"whole tumour": 1}
    assert not (app_bundle / "outputs").exists()  # the bundle's own file writing stays off


def test_infer_task_on_the_stacked_file_equals_inference_on_the_separate_files(
    monailabel, small_datasets, tmp_path
):
    """scripts/stack_modalities.py's 4-D file through MONAI Label's BundleInferTask gives the
    segmentation `monai.bundle run inference` writes from the four separate files."""
    from monailabel.tasks.infer.bundle import BundleInferTask

    bundle = make_app_bundle(tmp_path / MODEL)
    case = _cases(small_datasets["brats2020"])[0]
    [image] = stack_modalities(str(case), str(tmp_path / "studies"))
    label_file, _ = BundleInferTask(str(bundle), {})({"image": str(image), "device": "cpu"})
    out = tmp_path / "out"
    monai.bundle.run(
        "inference",
        config_file=str(bundle / "configs" / "inference.yaml"),
        bundle_root=str(bundle),
        dataset_dir=str(case),
        output_dir=str(out),
        device="cpu",
        quicklook=False,
    )
    separate = nib.load(str(output_path(out, case.name, "pred")))
    stacked = nib.load(label_file)
    np.testing.assert_allclose(stacked.affine, separate.affine, atol=1e-4)
    seg = np.asanyarray(separate.dataobj)
    assert 0 < seg.sum() < seg.size  # a segmentation to compare, neither empty nor full
    np.testing.assert_array_equal(np.asanyarray(stacked.dataobj), seg)


def test_each_train_request_trains_the_current_model_and_reports(
    monailabel, app_bundle, small_datasets, tmp_path
):
    """Two identical requests of one epoch (fewer than val_interval): each trains a fresh run
    of the requested epochs from the current model.pt, validates, replaces model.pt and writes
    its report; the second is no no-op resume of the first's last.pt."""
    from monailabel.datastore.local import LocalDatastore
    from monailabel.tasks.train.bundle import BundleTrainTask

    store = tmp_path / "datastore"
    stack_modalities(str(small_datasets["brats2020"]), str(store))  # images and final labels
    models = app_bundle / "models"
    task = BundleTrainTask(str(app_bundle), {})
    assert task.is_valid()
    request = {"model": MODEL, "max_epochs": 1, "val_split": 0.5, "device": "cpu"}
    current = model_weights(app_bundle)
    for _ in range(2):
        task(dict(request), LocalDatastore(str(store), extensions=("*.nii.gz",)))
        trainer = torch.load(models / "last.pt", weights_only=True)["trainer"]
        assert trainer["iteration"] == trainer["epoch_length"] > 0  # one epoch, from epoch 0
        stats = json.loads((models / "train_stats.json").read_text())
        assert stats["epoch"] == stats["epochs_run"] == 1
        assert stats["iterations_run"] == trainer["epoch_length"]
        assert stats["eval"]["key_metric_name"] == "val_mean_dice"
        assert stats["model_updated"] and stats["best_metric"] is not None
        trained = model_weights(app_bundle)
        assert trained.keys() == current.keys()
        changes = [float((trained[k] - current[k]).abs().max()) for k in current]
        # trained on from model.pt (MONAI Label's CheckpointLoader), not from a new network
        assert 0 < max(changes) < 0.05, max(changes)
        current = trained
