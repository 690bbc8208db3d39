"""Reverse-diffusion samplers for the epsilon-predicting mask DDPM.

One interface serves training-time validation and inference: the caller builds a
``denoise(x_t, t) -> eps`` closure (which concatenates the image condition and may chunk the
batch) and a sampler turns x_T into an x0 estimate in [-1, 1] (the mask scaled as 0 -> -1, 1 -> +1).

All coefficients come from the training scheduler's ``alphas_cumprod`` (so sampling matches the
noise the network was trained on) and are computed as float64 Python numbers, which keeps the
samplers free of device and dtype assumptions: the state has the device and dtype of ``noise``.

Timestep sub-sequences (DDIM, DPM-Solver++) are ``round(linspace(T-1, 0, k))``: the first step
starts from the noisiest trained timestep, the last network evaluation is at t = 0, and each step
goes to the *actual* next timestep of the sequence (MONAI's ``DDIMScheduler.step`` assumes a
stride of ``T // k`` instead, which does not match its own linspace timesteps). After the last
evaluation every sampler returns the clipped x0 prediction, i.e. it steps to alpha_bar = 1.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from monai.networks.schedulers import DDPMScheduler, Scheduler

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``denoise(x_t, t)``, ``t`` an int64 tensor of shape (B,), returns the network's prediction:
epsilon (the paper's), or x0 or v when the scheduler's ``prediction_type`` says so."""

SAMPLER_NAMES = ("ddpm", "ddim", "dpmpp_2m")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
"""What the network may be trained to predict (MONAI schedulers' ``prediction_type``)."""


def predicted_x0(
    scheduler: Scheduler, output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The x0 that a network's prediction implies under the scheduler's ``prediction_type``
    (epsilon, x0 itself or v); coefficients in float64, then in the state's dtype."""
    abar = scheduler.alphas_cumprod.to(x_t.device, torch.float64)[timesteps]
    abar = abar.view((-1,) + (1,) * (x_t.ndim - 1))
    signal, noise = abar.sqrt().to(x_t.dtype), (1.0 - abar).sqrt().to(x_t.dtype)
    kind = getattr(scheduler, "prediction_type", "epsilon")
    if kind == "sample":
        return output
    if kind == "v_prediction":
        return signal * x_t - noise * output
    return (x_t - noise * output) / signal


def spaced_timesteps(num_train_timesteps: int, num_steps: int) -> list[int]:
    """Descending, unique ``round(linspace(T-1, 0, num_steps))``: starts at T-1, ends at 0."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}.")
    steps = torch.linspace(num_train_timesteps - 1, 0, num_steps, dtype=torch.float64)
    return steps.round().long().unique().flip(0).tolist()


class Sampler(ABC):
    """Maps x_T to a clipped x0 estimate by repeatedly calling a denoiser at ``self.timesteps``."""

    def __init__(self, scheduler: Scheduler, timesteps: Sequence[int]) -> None:
        self.scheduler = scheduler
        abar = scheduler.alphas_cumprod.detach().to("cpu", torch.float64)
        self.alphas_cumprod: list[float] = abar.tolist()
        # a network trained with a learned variance outputs it after its C predictions
        self.learned_variance = getattr(scheduler, "variance_type", None) == "learned_range"
        self.timesteps = list(timesteps)
        self.prediction_type = getattr(scheduler, "prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type {self.prediction_type!r} is not one of {PREDICTION_TYPES}"
            )

    @property
    def num_steps(self) -> int:
        """Number of network evaluations per sample."""
        return len(self.timesteps)

    @abstractmethod
    def sample(
        self,
        denoise: Denoiser,
        noise: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: Callable[[], object] | None = None,
    ) -> torch.Tensor:
        """Run the reverse process from ``noise`` (x_T); ``progress`` is called once per step."""

    def _predict_x0(
        self, denoise: Denoiser, x: torch.Tensor, t: int, progress: Callable[[], object] | None
    ) -> torch.Tensor:
        """One network evaluation: the x0 it implies, clipped to [-1, 1]; see :meth:`_evaluate`."""
        return self._evaluate(denoise, x, t, progress)[0]

    def _evaluate(
        self, denoise: Denoiser, x: torch.Tensor, t: int, progress: Callable[[], object] | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One network evaluation: the x0 the network's output implies (it predicts epsilon,
        x0 itself or v, as the scheduler says), clipped to [-1, 1] (guided-diffusion's
        ``clip_denoised=True``), and its variance output v in [-1, 1] if it learned one."""
        timesteps = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        out = denoise(x, timesteps)
        if progress is not None:
            progress()
        v = None
        if self.learned_variance:
            out, v = out.chunk(2, dim=1)
        return predicted_x0(self.scheduler, out, x, timesteps).clamp(-1.0, 1.0), v


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Step noise for the whole state in one draw: chunking inside ``denoise`` cannot change it."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


class DDPMSampler(Sampler):
    """Ancestral DDPM sampling over all T steps (Ho et al. 2020), as in the paper's reference code.

    Each step samples the posterior q(x_{t-1} | x_t, x0_hat) with the "fixed small" variance
    beta_tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t), where beta_t = 1 - abar_t / abar_{t-1}
    is read off ``alphas_cumprod``; with a learned variance (``learned_range``), with
    exp(f log beta_t + (1 - f) log beta_tilde_t), f = (v + 1) / 2, from the network's v (the
    paper's code, ``learn_sigma=True``).
    """

    def __init__(self, scheduler: Scheduler) -> None:
        super().__init__(scheduler, range(len(scheduler.alphas_cumprod) - 1, -1, -1))

    def sample(
        self,
        denoise: Denoiser,
        noise: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: Callable[[], object] | None = None,
    ) -> torch.Tensor:
        x = noise
        for t in self.timesteps[:-1]:
            x0, v = self._evaluate(denoise, x, t, progress)
            abar, abar_prev = self.alphas_cumprod[t], self.alphas_cumprod[t - 1]
            beta = 1.0 - abar / abar_prev
            coef_x0 = math.sqrt(abar_prev) * beta / (1.0 - abar)
            coef_xt = math.sqrt(1.0 - beta) * (1.0 - abar_prev) / (1.0 - abar)
            log_var = math.log(beta * (1.0 - abar_prev) / (1.0 - abar))
            if v is not None:
                frac = (v + 1.0) / 2.0
                log_var = frac * math.log(beta) + (1.0 - frac) * log_var
            std = torch.as_tensor(log_var, dtype=x.dtype, device=x.device).mul(0.5).exp()
            x = coef_x0 * x0 + coef_xt * x + std * _randn_like(x, generator)
        # at t = 0, abar_prev = 1: the posterior mean is x0_hat and the variance is 0
        return self._predict_x0(denoise, x, 0, progress)


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021) over ``num_steps`` spaced timesteps.

    ``eta=0`` is deterministic; ``eta=1`` with all T steps is the DDPM ancestral sampler. Epsilon
    is re-derived from the clipped x0 before stepping, as guided-diffusion does.
    """

    def __init__(self, scheduler: Scheduler, num_steps: int, eta: float = 0.0) -> None:
        super().__init__(scheduler, spaced_timesteps(len(scheduler.alphas_cumprod), num_steps))
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}.")
        self.eta = eta

    def sample(
        self,
        denoise: Denoiser,
        noise: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: Callable[[], object] | None = None,
    ) -> torch.Tensor:
        x = noise
        for t, t_next in zip(self.timesteps[:-1], self.timesteps[1:], strict=True):
            x0 = self._predict_x0(denoise, x, t, progress)
            abar, abar_next = self.alphas_cumprod[t], self.alphas_cumprod[t_next]
            eps = (x - math.sqrt(abar) * x0) / math.sqrt(1.0 - abar)
            var_ratio = (1.0 - abar_next) / (1.0 - abar) * (1.0 - abar / abar_next)
            sigma = self.eta * math.sqrt(var_ratio)
            # max(): eta = 1 makes the radicand 0 up to round-off
            x = math.sqrt(abar_next) * x0 + math.sqrt(max(1.0 - abar_next - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * _randn_like(x, generator)
        # the last step goes to alpha_bar = 1, where the DDIM update is x0_hat itself
        return self._predict_x0(denoise, x, self.timesteps[-1], progress)


class DPMSolverPP2MSampler(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022): multistep second-order solver of the probability-flow
    ODE in data (x0) prediction, integrating over the half-log-SNR lambda = log(alpha / sigma).

    The first step is first order (no history yet; it equals DDIM). The last step goes to
    sigma = 0 where lambda is infinite, so it is first order too and reduces to returning the x0
    prediction (diffusers' ``lower_order_final`` with ``final_sigmas_type="zero"``).
    Deterministic: ``generator`` is unused.
    """

    def __init__(self, scheduler: Scheduler, num_steps: int) -> None:
        super().__init__(scheduler, spaced_timesteps(len(scheduler.alphas_cumprod), num_steps))

    def sample(
        self,
        denoise: Denoiser,
        noise: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: Callable[[], object] | None = None,
    ) -> torch.Tensor:
        x = noise
        prev_x0: torch.Tensor | None = None
        prev_lam = 0.0
        for t, t_next in zip(self.timesteps[:-1], self.timesteps[1:], strict=True):
            x0 = self._predict_x0(denoise, x, t, progress)
            abar, abar_next = self.alphas_cumprod[t], self.alphas_cumprod[t_next]
            lam, lam_next = _half_log_snr(abar), _half_log_snr(abar_next)
            h = lam_next - lam
            # D0 + D1 / 2, D1 = (x0 - prev_x0) / r0, r0 = h_prev / h (diffusers' "midpoint" type)
            d = x0 if prev_x0 is None else x0 + 0.5 * (h / (lam - prev_lam)) * (x0 - prev_x0)
            ratio = math.sqrt((1.0 - abar_next) / (1.0 - abar))
            x = ratio * x - math.sqrt(abar_next) * math.expm1(-h) * d
            prev_x0, prev_lam = x0, lam
        # first-order step to sigma = 0: x = x0_hat
        return self._predict_x0(denoise, x, self.timesteps[-1], progress)


def _half_log_snr(abar: float) -> float:
    """lambda = log(alpha / sigma) = log(abar / (1 - abar)) / 2."""
    return 0.5 * (math.log(abar) - math.log1p(-abar))


def make_sampler(
    name: str, num_steps: int, scheduler: Scheduler | None = None, eta: float = 0.0
) -> Sampler:
    """Build a sampler by name ("ddpm", "ddim" or "dpmpp_2m") for bundle configs.

    ``scheduler`` defaults to MONAI's ``DDPMScheduler()`` (linear betas 1e-4..0.02, T = 1000) and
    must match the one used in training. "ddpm" always runs all T steps: another ``num_steps`` is
    ignored with a warning, so that switching the sampler name in a config does not require
    touching the step count. ``eta`` is used by "ddim" only.
    """
    scheduler = DDPMScheduler() if scheduler is None else scheduler
    if name == "ddpm":
        total = len(scheduler.alphas_cumprod)
        if num_steps != total:
            warnings.warn(
                f"'ddpm' runs all {total} steps; ignoring num_steps={num_steps}.", stacklevel=2
            )
        return DDPMSampler(scheduler)
    if name == "ddim":
        return DDIMSampler(scheduler, num_steps, eta=eta)
    if name == "dpmpp_2m":
        return DPMSolverPP2MSampler(scheduler, num_steps)
    raise ValueError(f"Unknown sampler {name!r}; valid names are {', '.join(SAMPLER_NAMES)}.")
