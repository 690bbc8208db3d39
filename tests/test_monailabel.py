"""The bundle as MONAI Label 0.8.5's monaibundle app runs it: BundleInferTask and BundleTrainTask
on a copy of the bundle folder, with each case one 4-D NIfTI as MONAI Label's datastore has it."""

from __future__ import annotations

import ast
import importlib.util
import shutil
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from tests.bundle_cli import TINY_DIFFUSION_NET
from tests.conftest import REPO
from tests.test_inference import tiny_weights

pytestmark = pytest.mark.slow  # every test here runs the bundle end to end

MODALITIES = ("t1", "t1ce", "t2", "flair")  # the metadata's channel_def, the 4-D image's order
SMALL = {"image_size": 64, "prediction_type": "epsilon", "num_samples": 2, "sampling_steps": 2}
SMALL_TRAINING = {"image_size": 64, "slices_per_volume": 2, "batch_size": 2}


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


@pytest.fixture(scope="module")
def app_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle folder as a MONAI Label app holds it, with the tiny test network: MONAI Label
    reads the configs as they are, so the test sizes are written into copies of them."""
    root = tmp_path_factory.mktemp("monaibundle") / "brats_diffusion"
    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copytree(REPO / "bundle", root / "bundle", ignore=shutil.ignore_patterns("__pycache__"))
    tiny = {key: ast.literal_eval(value) for key, value in TINY_DIFFUSION_NET.items()}
    _set(root / "configs" / "inference.yaml", {**tiny, **SMALL})
    _set(root / "configs" / "train.yaml", {**tiny, **SMALL_TRAINING})
    (root / "models").mkdir()
    tiny_weights(root / "models" / "model.pt")
    return root


def stack_case(case_dir: Path, image: Path, label: Path | None = None) -> None:
    """One BraTS 2020 case folder as a 4-D image (t1, t1ce, t2, flair) and its label file."""
    first = nib.load(str(case_dir / f"{case_dir.name}_t1.nii.gz"))
    volumes = [
        np.asanyarray(nib.load(str(case_dir / f"{case_dir.name}_{m}.nii.gz")).dataobj)
        for m in MODALITIES
    ]
    image.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.stack(volumes, axis=-1), first.affine), str(image))
    if label is not None:
        label.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(case_dir / f"{case_dir.name}_seg.nii.gz", label)


def _cases(dataset: Path) -> list[Path]:
    return sorted(p for p in dataset.iterdir() if p.is_dir())


def test_infer_task_returns_the_segmentation_with_mean_and_variance(
    monailabel, app_bundle, small_datasets, tmp_path
):
    from monailabel.tasks.infer.basic_infer import CallBackTypes
    from monailabel.tasks.infer.bundle import BundleInferTask

    case = _cases(small_datasets["brats2020"])[0]
    image = tmp_path / f"{case.name}.nii.gz"
    stack_case(case, image)
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


def test_train_task_runs_an_epoch_on_4d_cases(monailabel, app_bundle, small_datasets, tmp_path):
    from monailabel.datastore.local import LocalDatastore
    from monailabel.tasks.train.bundle import BundleTrainTask

    store = tmp_path / "datastore"
    for case in _cases(small_datasets["brats2020"])[:2]:
        name = f"{case.name}.nii.gz"
        stack_case(case, store / name, store / "labels" / "final" / name)
    models = app_bundle / "models"
    start = torch.load(models / "model.pt", weights_only=True)
    task = BundleTrainTask(str(app_bundle), {})
    assert task.is_valid()
    request = {"model": "brats_diffusion", "max_epochs": 1, "val_split": 0.5, "device": "cpu"}
    task(request, LocalDatastore(str(store), extensions=("*.nii.gz",)))
    state = torch.load(models / "last.pt", weights_only=True)
    trainer = state["trainer"]  # ignite keeps the iteration: one epoch is epoch_length of them
    assert trainer["max_epochs"] == 1 and trainer["iteration"] == trainer["epoch_length"] > 0
    # it started from the shipped weights (MONAI Label's CheckpointLoader) and changed them
    assert state["model"].keys() == start.keys()
    assert any(not torch.equal(state["model"][k], start[k]) for k in start)
