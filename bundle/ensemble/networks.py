"""Several networks trained alike, as one ensemble's source of samples."""

from __future__ import annotations

import copy

from torch import nn


class NetworkEnsemble(nn.ModuleList):
    """K networks of one architecture, trained alike with different seeds: sample i of an
    implicit ensemble is drawn with network ``i % K`` (``ImplicitEnsembleInferer``), so the
    samples disagree where the networks do as well as where one network's sampling does (a
    deep ensemble of diffusion models; docs/uncertainty.md). Its state dict holds the members'
    under ``0.``, ``1.``, ...

    Args:
        network: the architecture; each member is a copy of it.
        size: K, the number of members.
    """

    def __init__(self, network: nn.Module, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}.")
        super().__init__([copy.deepcopy(network) for _ in range(size)])
