"""The bundle as MONAI Label 0.8.5's monaibundle app runs it: BundleInferTask and BundleTrainTask
on a copy of the bundle folder, with each case one 4-D NIfTI as MONAI Label's datastore has it."""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import monai.bundle
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from bundle.io.checkpoints import load_weights
from scripts.stack_modalities import stack_modalities
from tests.bundle_cli import TINY_DIFFUSION_NET
from tests.conftest import REPO
from tests.test_inference import tiny_weights

SMALL = {"image_size": 64, "prediction_type": "epsilon", "num_samples": 2, "sampling_steps": 2}
SMALL_TRAINING = {
    "image_size": 64,
    "slices_per_volume": 2,
    "batch_size": 2,
    "val_slices_per_volume": 2,
    "val_num_samples": 2,
    "val_sampling_steps": 2,
}


def _stand_in_torchvision() -> dict[str, types.ModuleType]:
    """``monailabel/transform/post.py`` imports ``torchvision.utils`` (``make_grid``,
    ``save_image``) at module level for 2-D image outputs that no bundle task calls; the only
    torchvision wheels for our torch are CUDA builds that break CPU torch on import. This stand-in
    lets the import succeed and fails loudly if either function is ever called."""

    def unavailable(*args: object, **kwargs: object) -> None:
        raise RuntimeError("torchvision stand-in: not installed in the test environment")

    utils = types.ModuleType("torchvision.utils")
    utils.make_grid = utils.save_image = unavailable
    package = types.ModuleType("torchvision")
    package.utils = utils
    return {"torchvision": package, "torchvision.utils": utils}


@pytest.fixture(scope="module")
def monailabel():
    """MONAI Label importable (the README's test command installs it with --no-deps, from
    requirements-monailabel.txt), with the torchvision stand-in when torchvision is missing."""
    with pytest.MonkeyPatch.context() as patch:
        if importlib.util.find_spec("torchvision") is None:
            for name, module in _stand_in_torchvision().items():
                patch.setitem(sys.modules, name, module)
        yield


def _set(config: Path, values: dict[str, object]) -> None:
    """Rewrite a YAML config with some keys (``a#b`` for nested ones) set."""
    data = yaml.safe_load(config.read_text())
    for key, value in values.items():
        *parents, last = key.split("#")
        node = data
        for parent in parents:
            node = node[parent]
        node[last] = value
    config.write_text(yaml.safe_dump(data, sort_keys=False))


def make_app_bundle(root: Path) -> Path:
    """The bundle folder as a MONAI Label app holds it (``root``), with the tiny test network:
    MONAI Label reads the configs as they are, so the test sizes are written into copies."""
    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copytree(REPO / "bundle", root / "bundle", ignore=shutil.ignore_patterns("__pycache__"))
    tiny = {key: ast.literal_eval(value) for key, value in TINY_DIFFUSION_NET.items()}
    _set(root / "configs" / "inference.yaml", {**tiny, **SMALL})
    _set(root / "configs" / "train.yaml", {**tiny, **SMALL_TRAINING})
    (root / "models").mkdir()
    tiny_weights(root / "models" / "model.pt")
    return root


@pytest.fixture(scope="module")
def app_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_app_bundle(tmp_path_factory.mktemp("monaibundle") / "brats_diffusion")


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

    after_post = {}

    def keep(data: dict) -> dict:
        after_post.update(data)
        return data

    label_file, result = task(
        {"image": str(image), "device": "cpu"}, callbacks={CallBackTypes.POST_TRANSFORMS: keep}
    )
    reference = nib.load(str(image))
    label = nib.load(label_file)
    seg = np.asanyarray(label.dataobj)
    assert seg.shape == reference.shape[:3]
    np.testing.assert_allclose(label.affine, reference.affine, atol=1e-4)
    assert set(np.unique(seg)) == {0, 1}
    # the label file is the ensemble mean thresholded at 0.5; mean and variance are still there,
    # in the input's geometry
    mean, variance = after_post["mean"], after_post["variance"]
    assert mean.shape == variance.shape == (1, *reference.shape[:3])
    np.testing.assert_array_equal(seg, (mean[0] > 0.5).numpy())
    assert float(variance.max()) > 0 and float(variance.min()) >= 0
    assert result["label_names"] == {"whole tumour": 1}
    assert not (app_bundle / "outputs").exists()  # the bundle's own file writing stays off


def test_infer_task_on_the_stacked_file_equals_inference_on_the_separate_files(
    monailabel, small_datasets, tmp_path
):
    """scripts/stack_modalities.py's 4-D file through MONAI Label's BundleInferTask gives the
    segmentation `monai.bundle run inference` writes from the four separate files."""
    from monailabel.tasks.infer.bundle import BundleInferTask

    bundle = make_app_bundle(tmp_path / "brats_diffusion")
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
    separate = nib.load(str(out / f"{case.name}_seg.nii.gz"))
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
    request = {"model": "brats_diffusion", "max_epochs": 1, "val_split": 0.5, "device": "cpu"}
    current = load_weights(models / "model.pt")
    for _ in range(2):
        task(dict(request), LocalDatastore(str(store), extensions=("*.nii.gz",)))
        trainer = torch.load(models / "last.pt", weights_only=True)["trainer"]
        assert trainer["iteration"] == trainer["epoch_length"] > 0  # one epoch, from epoch 0
        stats = json.loads((models / "train_stats.json").read_text())
        assert stats["epoch"] == stats["epochs_run"] == 1
        assert stats["iterations_run"] == trainer["epoch_length"]
        assert stats["eval"]["key_metric_name"] == "val_mean_dice"
        assert stats["model_updated"] and stats["best_metric"] is not None
        trained = load_weights(models / "model.pt")
        assert trained.keys() == current.keys()
        changes = [float((trained[k] - current[k]).abs().max()) for k in current]
        # trained on from model.pt (MONAI Label's CheckpointLoader), not from a new network
        assert 0 < max(changes) < 0.05, max(changes)
        current = trained
