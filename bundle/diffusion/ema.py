"""Optional exponential moving average (EMA) of the network's weights during training.

guided-diffusion, which the paper's code forks, keeps an EMA of the weights (decay 0.9999) and
samples with it. Here it is a switch (``ema: true`` in train.yaml): validation, the best-model
checkpoint and therefore inference then use the averaged weights. It builds on ignite's
``EMAHandler``; while switched off it holds no copy of the network and attaches nothing.
"""

from __future__ import annotations

from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from torch import nn

from bundle.workflow.options import flag


class WeightAverage:
    """The EMA switch: ``model`` is the averaged copy when enabled, else the network itself.

    ``decay`` is the weight the average keeps per iteration. An average that starts from random
    weights would lag a run of a few thousand iterations badly, so the decay used at iteration n
    is ``min(decay, (1 + n) / (10 + n))`` (the usual warm-up, e.g. diffusers' EMA): the average
    follows the network closely at first and settles to ``decay``.
    """

    def __init__(self, network: nn.Module, enabled: bool | str = False, decay: float = 0.999):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.network = network
        self.enabled = flag(enabled)
        self.decay = decay
        self.handler = EMAHandler(network, momentum=1.0 - decay) if self.enabled else None

    @property
    def model(self) -> nn.Module:
        """The weights to validate and to ship: the average, or the network when disabled."""
        return self.handler.ema_model if self.handler is not None else self.network

    @property
    def save_dict(self) -> dict[str, nn.Module]:
        """What a resumable checkpoint must hold besides the network: the average, if any."""
        return {"ema": self.handler.ema_model} if self.handler is not None else {}

    def attach(self, engine: Engine) -> None:
        """Update the average after every iteration (nothing while disabled); the warm-up sets
        the handler's momentum (1 - decay) just before each update."""
        if self.handler is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._set_momentum)
            self.handler.attach(engine, warn_if_exists=False)

    def _set_momentum(self, engine: Engine) -> None:
        n = engine.state.iteration
        engine.state.ema_momentum = 1.0 - min(self.decay, (1.0 + n) / (10.0 + n))
