"""load_weights stops with one line naming a file that holds neither checkpoint format (both
formats are read in tests/test_speed_paths.py)."""

from __future__ import annotations

import re

import pytest
import torch

from bundle.data.layouts import DatasetError
from bundle.io.checkpoints import load_weights


def test_load_weights_names_a_file_with_neither_format(tmp_path) -> None:
    other = tmp_path / "other.pt"
    torch.save({"optimizer": {"lr": torch.tensor(0.1)}}, other)
    with pytest.raises(
        DatasetError, match=re.escape(f"checkpoint {other} has no 'model' state dict")
    ):
        load_weights(torch.nn.Linear(2, 3), other)
