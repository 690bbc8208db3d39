"""The paper's baselines, in the diffusion ensemble's output format (mean, variance).

A deterministic segmentation U-Net (SegNet-like: one pass, variance 0) and its Monte-Carlo
dropout version (Bayesian SegNet-like: N passes with dropout left on), so that validation,
inference, evaluation and the uncertainty measures treat all methods alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from bundle.ensemble.inferers import SliceEnsembleInferer
from bundle.workflow.options import flag


@contextlib.contextmanager
def _dropout_on(network: Callable[..., torch.Tensor], enabled: bool) -> Iterator[None]:
    """Switch the dropout layers (only) to training mode for MC dropout."""
    modules = network.modules() if isinstance(network, nn.Module) else ()
    layers = [m for m in modules if isinstance(m, nn.modules.dropout._DropoutNd)]
    if enabled:
        for layer in layers:
            layer.train()
    try:
        yield
    finally:
        for layer in layers:
            layer.eval()


class DropoutEnsembleInferer(SliceEnsembleInferer):
    """Sigmoid probabilities of a segmentation network, averaged over N passes.

    With ``mc_dropout`` false (the default) the network runs once and the variance is 0: the
    deterministic U-Net baseline. With ``mc_dropout`` true the N passes keep dropout on and the
    variance of their probabilities is the MC-dropout uncertainty (Gal and Ghahramani 2016).

    Args:
        num_samples: passes with dropout on (``mc_dropout``); one pass otherwise.
        mc_dropout: keep dropout on at inference.
        seed: seed of the dropout masks.
        memory_budget_mb: memory allowed for network activations per forward pass.
        brain_threshold: slices with no ``|value| > brain_threshold`` are skipped.
        mask_channels: C, the network's output channels (one per region).
        return_samples: append the individual passes to the output.
        spatial_multiple: the sampled box's height and width are multiples of it.
        cpu_batch_size: most images per network call on a CPU.
        nested: make the channels nested regions (see :class:`SliceEnsembleInferer`).
    """

    def __init__(
        self,
        num_samples: int = 1,
        mc_dropout: bool = False,
        seed: int = 0,
        memory_budget_mb: float = 4096,
        brain_threshold: float = 0.0,
        mask_channels: int = 1,
        return_samples: bool = False,
        spatial_multiple: int = 8,
        cpu_batch_size: int = 8,
        nested: bool = False,
    ) -> None:
        super().__init__(
            num_samples if flag(mc_dropout) else 1,
            seed,
            memory_budget_mb,
            brain_threshold,
            mask_channels,
            return_samples,
            spatial_multiple,
            cpu_batch_size,
            nested,
        )
        self.mc_dropout = flag(mc_dropout)

    def _samples(
        self,
        slices: torch.Tensor,
        keep: torch.Tensor,
        brain: torch.Tensor,  # the network reads whole boxes, brain or not
        network: Callable[..., torch.Tensor],
    ) -> torch.Tensor:
        image = slices[keep]

        def forward(x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(network(x))

        chunk = self._chunk(network, forward, image[:1])
        devices = [slices.device] if slices.device.type == "cuda" else []
        with _dropout_on(network, self.mc_dropout), torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            passes = [
                torch.cat([forward(image[i : i + chunk]) for i in range(0, len(image), chunk)])
                for _ in range(self.num_samples)
            ]
        return torch.stack(passes)
