"""network_weights reads the weights of every checkpoint format the bundle has shipped."""

from __future__ import annotations

import pytest
import torch

from bundle.data.layouts import DatasetError
from bundle.io.checkpoints import network_weights


def test_network_weights_reads_bare_and_training_checkpoints(tmp_path):
    weights = torch.nn.Linear(2, 3).state_dict()
    bare, trained, other = tmp_path / "bare.pt", tmp_path / "trained.pt", tmp_path / "other.pt"
    torch.save(weights, bare)
    torch.save({"model": weights, "settings": {"regions": ["wt"]}}, trained)
    torch.save({"optimizer": {"lr": 0.1}}, other)
    for path in (bare, trained):
        loaded = network_weights(path)
        assert loaded.keys() == weights.keys()
        assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    with pytest.raises(DatasetError, match="neither a state dict nor a 'model' state dict"):
        network_weights(other)
