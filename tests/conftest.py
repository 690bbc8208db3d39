"""Shared fixtures: small synthetic datasets in every supported layout, generated once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bundle.data.synthetic import make_demo_data

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):  # parallel workers share the cores: one thread each
    torch.set_num_threads(1)

SMALL_SHAPE = (64, 64, 40)
LAYOUT_NAMES = ("brats2020", "brats2023", "msd")


@pytest.fixture(scope="session")
def small_datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three cases per layout, the same seed for all, so every layout holds the same anatomy."""
    root = tmp_path_factory.mktemp("datasets")
    for layout in LAYOUT_NAMES:
        make_demo_data(
            output_dir=str(root / layout), num_cases=3, seed=0, layout=layout, shape=SMALL_SHAPE
        )
    return {layout: root / layout for layout in LAYOUT_NAMES}
