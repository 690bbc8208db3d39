"""The bundle as a MONAI Label 0.8.5 monaibundle app holds it, for tests/test_monailabel*.py."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import torch
import yaml
from monai.bundle import ConfigParser

from bundle.io.checkpoints import load_weights
from tests.bundle_cli import TINY_DIFFUSION_NET, tiny_weights
from tests.conftest import REPO

MODEL = "brats_diffusion"
"""The bundle's folder name in the app's model folder (no "deepedit", "deepgrow" or "detection":
MONAI Label then treats it as a segmentation model), and so its model name in requests."""

SMALL = {"image_size": 64, "prediction_type": "epsilon", "num_samples": 2, "sampling_steps": 2}
SMALL_TRAINING = {
    "image_size": 64,
    "slices_per_volume": 2,
    "batch_size": 2,
    "val_slices_per_volume": 2,
    "val_num_samples": 2,
    "val_sampling_steps": 2,
}

STAND_IN = '''"""torchvision stand-in for tests: monailabel/transform/post.py imports
torchvision.utils (make_grid, save_image) for 2-D image outputs that no bundle task calls."""


def _unavailable(*args, **kwargs):
    raise RuntimeError("torchvision stand-in: not installed in the test environment")


make_grid = save_image = _unavailable
'''


def write_torchvision_stand_in(folder: Path) -> Path:
    """A ``torchvision`` package in ``folder`` (put on the path where torchvision is missing):
    ``monailabel/transform/post.py`` imports ``torchvision.utils`` at module level, and the only
    torchvision wheels reachable here are CUDA builds that break CPU torch on import. The
    stand-in lets the import succeed and fails loudly if either function is ever called."""
    package = folder / "torchvision"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "utils.py").write_text(STAND_IN)
    return folder


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


def model_weights(root: Path) -> dict[str, torch.Tensor]:
    """The weights of the app bundle's models/model.pt, in whichever format MONAI Label's
    training left it, read into the bundle's own (tiny) network_def."""
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.yaml"))
    network = parser.get_parsed_content("network_def")
    return load_weights(network, root / "models" / "model.pt").state_dict()
