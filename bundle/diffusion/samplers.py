"""Reverse-diffusion samplers for the mask DDPM: one loop, one update rule per sampler.

One interface serves training-time validation and inference: the caller builds a
``denoise(x_t, t)`` closure (which puts the image next to the noisy mask and may chunk the batch)
and a sampler turns x_T into an x0 estimate in [-1, 1] (the mask scaled as 0 -> -1, 1 -> +1).

:meth:`Sampler.sample` walks the timesteps once: at each it evaluates the network (the x0 its
output implies, clipped, see :meth:`Sampler.predict`) and asks the sampler's :meth:`~Sampler.step`
for the state at the next timestep; after the last evaluation it returns the x0 prediction,
i.e. every sampler steps to alpha_bar = 1 there. A sampler is one class (diffusers' pattern):
its ``name``, its timesteps and its ``step``.

All coefficients come from the training scheduler's ``alphas_cumprod`` (so sampling matches the
noise the network was trained on) and are computed in float64, which keeps the samplers free of
device and dtype assumptions: the state has the device and dtype of ``noise``.

Timestep sub-sequences (DDIM, DPM-Solver++) are ``round(linspace(T-1, 0, k))``: the first step
starts from the noisiest trained timestep, the last network evaluation is at t = 0, and each step
goes to the *actual* next timestep of the sequence (MONAI's ``DDIMScheduler.step`` assumes a
stride of ``T // k`` instead, which does not match its own linspace timesteps).
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from typing import ClassVar, NamedTuple

import torch
from monai.networks.schedulers import DDPMScheduler, Scheduler

from bundle.diffusion.process import learns_variance, posterior, predicted_x0, prediction_type

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``denoise(x_t, t)``, ``t`` an int64 tensor of shape (B,), returns the network's prediction:
epsilon (the paper's), or x0 or v when the scheduler's ``prediction_type`` says so."""

SAMPLERS: dict[str, type[Sampler]] = {}
"""The samplers by name, as configs and ``--sampler`` name them: every subclass of
:class:`Sampler` with a ``name`` adds itself."""


class Prediction(NamedTuple):
    """One network evaluation at timestep ``t``: the x0 its output implies, clipped to [-1, 1]
    (guided-diffusion's ``clip_denoised=True``), and its variance output v in [-1, 1] (None
    unless the network learned its variance)."""

    t: int
    x0: torch.Tensor
    v: torch.Tensor | None


class Sampler(ABC):
    """Maps x_T to a clipped x0 estimate by calling a denoiser at ``self.timesteps``.

    A subclass sets ``name`` (which makes :func:`make_sampler` know it), passes its timesteps to
    ``__init__`` and defines :meth:`step`; ``order`` is how many of the latest predictions its
    step reads (2 for a two-step multistep method).
    """

    name: ClassVar[str]
    order: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in vars(cls):
            SAMPLERS[cls.name] = cls

    def __init__(self, scheduler: Scheduler, timesteps: Sequence[int]) -> None:
        self.scheduler = scheduler
        self.prediction_type = prediction_type(scheduler)  # fails at construction if unknown
        abar = scheduler.alphas_cumprod.detach().to("cpu", torch.float64)
        self.alphas_cumprod: list[float] = abar.tolist()
        # a network trained with a learned variance outputs it after its C predictions
        self.learned_variance = learns_variance(scheduler)
        self.timesteps = list(timesteps)

    @classmethod
    def from_settings(cls, scheduler: Scheduler, num_steps: int, eta: float = 0.0) -> Sampler:
        """The sampler for :func:`make_sampler`'s settings; ``eta`` only matters to samplers
        that draw noise at every step (DDIM)."""
        return cls(scheduler, num_steps)

    @property
    def num_steps(self) -> int:
        """Number of network evaluations per sample."""
        return len(self.timesteps)

    def sample(
        self,
        denoise: Denoiser,
        noise: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: Callable[[], object] | None = None,
    ) -> torch.Tensor:
        """Run the reverse process from ``noise`` (x_T); ``progress`` is called once per step."""
        x = noise
        history: deque[Prediction] = deque(maxlen=self.order)
        for t, t_next in zip(self.timesteps, [*self.timesteps[1:], None], strict=True):
            history.append(self.predict(denoise, x, t))
            if progress is not None:
                progress()
            if t_next is not None:
                x = self.step(x, t_next, history, generator)
        # after the last evaluation the state goes to alpha_bar = 1, where it is x0_hat itself
        return history[-1].x0

    def predict(self, denoise: Denoiser, x: torch.Tensor, t: int) -> Prediction:
        """One network evaluation at timestep ``t`` of the state ``x``."""
        timesteps = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        out = denoise(x, timesteps)
        v = None
        if self.learned_variance:
            out, v = out.chunk(2, dim=1)
        return Prediction(t, predicted_x0(self.scheduler, out, x, timesteps).clamp(-1.0, 1.0), v)

    @abstractmethod
    def step(
        self,
        x: torch.Tensor,
        t_next: int,
        history: Sequence[Prediction],
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """The state at ``t_next`` from the state ``x`` at ``history[-1].t``; ``history`` holds
        the latest ``order`` predictions, the current one last."""


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Step noise for the whole state in one draw: chunking inside ``denoise`` cannot change it."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


class DDPMSampler(Sampler):
    """Ancestral DDPM sampling over all T steps (Ho et al. 2020), as in the paper's reference code.

    Each step samples the posterior q(x_{t-1} | x_t, x0_hat) (:func:`bundle.diffusion.process.
    posterior`) with its "fixed small" variance, or with a learned variance the one the
    network's v sets (:meth:`~bundle.diffusion.process.Posterior.learned_log_variance`).
    """

    name = "ddpm"

    def __init__(self, scheduler: Scheduler) -> None:
        super().__init__(scheduler, range(len(scheduler.alphas_cumprod) - 1, -1, -1))
        self.posterior = posterior(scheduler.alphas_cumprod.detach().cpu())

    @classmethod
    def from_settings(cls, scheduler: Scheduler, num_steps: int, eta: float = 0.0) -> Sampler:
        """All T steps: another ``num_steps`` is ignored with a warning, so that switching the
        sampler name in a config does not require touching the step count."""
        total = len(scheduler.alphas_cumprod)
        if num_steps != total:
            warnings.warn(
                f"'ddpm' runs all {total} steps; ignoring num_steps={num_steps}.", stacklevel=3
            )
        return cls(scheduler)

    def step(
        self,
        x: torch.Tensor,
        t_next: int,
        history: Sequence[Prediction],
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        now = history[-1]
        q = self.posterior.at(now.t)  # t_next is t - 1
        log_var = q.log_variance if now.v is None else q.learned_log_variance(now.v)
        std = torch.as_tensor(log_var, dtype=x.dtype, device=x.device).mul(0.5).exp()
        return q.mean(now.x0, x) + std * _randn_like(x, generator)


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021) over ``num_steps`` spaced timesteps.

    ``eta=0`` is deterministic; ``eta=1`` with all T steps is the DDPM ancestral sampler. Epsilon
    is re-derived from the clipped x0 before stepping, as guided-diffusion does.
    """

    name = "ddim"

    def __init__(self, scheduler: Scheduler, num_steps: int, eta: float = 0.0) -> None:
        super().__init__(scheduler, spaced_timesteps(len(scheduler.alphas_cumprod), num_steps))
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}.")
        self.eta = eta

    @classmethod
    def from_settings(cls, scheduler: Scheduler, num_steps: int, eta: float = 0.0) -> Sampler:
        return cls(scheduler, num_steps, eta=eta)

    def step(
        self,
        x: torch.Tensor,
        t_next: int,
        history: Sequence[Prediction],
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        now = history[-1]
        abar, abar_next = self.alphas_cumprod[now.t], self.alphas_cumprod[t_next]
        eps = (x - math.sqrt(abar) * now.x0) / math.sqrt(1.0 - abar)
        var_ratio = (1.0 - abar_next) / (1.0 - abar) * (1.0 - abar / abar_next)
        sigma = self.eta * math.sqrt(var_ratio)
        # max(): eta = 1 makes the radicand 0 up to round-off
        x = math.sqrt(abar_next) * now.x0 + math.sqrt(max(1.0 - abar_next - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * _randn_like(x, generator)
        return x


class DPMSolverPP2MSampler(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022): multistep second-order solver of the probability-flow
    ODE in data (x0) prediction, integrating over the half-log-SNR lambda = log(alpha / sigma).

    The first step is first order (no history yet; it equals DDIM). The last step goes to
    sigma = 0 where lambda is infinite, so it is first order too and reduces to returning the x0
    prediction (diffusers' ``lower_order_final`` with ``final_sigmas_type="zero"``).
    Deterministic: ``generator`` is unused.
    """

    name = "dpmpp_2m"
    order = 2

    def __init__(self, scheduler: Scheduler, num_steps: int) -> None:
        super().__init__(scheduler, spaced_timesteps(len(scheduler.alphas_cumprod), num_steps))

    def _lambda(self, t: int) -> float:
        """lambda = log(alpha / sigma) = log(abar / (1 - abar)) / 2 at timestep t."""
        abar = self.alphas_cumprod[t]
        return 0.5 * (math.log(abar) - math.log1p(-abar))

    def step(
        self,
        x: torch.Tensor,
        t_next: int,
        history: Sequence[Prediction],
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        now = history[-1]
        abar, abar_next = self.alphas_cumprod[now.t], self.alphas_cumprod[t_next]
        lam = self._lambda(now.t)
        h = self._lambda(t_next) - lam
        # D0 on the first step; then D0 + D1 / 2, D1 = (x0 - prev_x0) / r0, r0 = h_prev / h
        # (diffusers' "midpoint" type)
        d = now.x0
        if len(history) > 1:
            prev = history[-2]
            d = now.x0 + 0.5 * (h / (lam - self._lambda(prev.t))) * (now.x0 - prev.x0)
        ratio = math.sqrt((1.0 - abar_next) / (1.0 - abar))
        return ratio * x - math.sqrt(abar_next) * math.expm1(-h) * d


def spaced_timesteps(num_train_timesteps: int, num_steps: int) -> list[int]:
    """Descending, unique ``round(linspace(T-1, 0, num_steps))``: starts at T-1, ends at 0."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}.")
    steps = torch.linspace(num_train_timesteps - 1, 0, num_steps, dtype=torch.float64)
    return steps.round().long().unique().flip(0).tolist()


def make_sampler(
    name: str, num_steps: int, scheduler: Scheduler | None = None, eta: float = 0.0
) -> Sampler:
    """Build a sampler by name (a key of :data:`SAMPLERS`: "ddpm", "ddim", "dpmpp_2m") for
    bundle configs.

    ``scheduler`` defaults to MONAI's ``DDPMScheduler()`` (linear betas 1e-4..0.02, T = 1000) and
    must match the one used in training. "ddpm" always runs all T steps. ``eta`` is used by
    "ddim" only.
    """
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler {name!r}; valid names are {', '.join(SAMPLERS)}.")
    scheduler = DDPMScheduler() if scheduler is None else scheduler
    return SAMPLERS[name].from_settings(scheduler, num_steps, eta)
