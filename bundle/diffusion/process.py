"""The diffusion process, written once for training and sampling.

Training and sampling must agree on four things, and each is defined here only:

- what the network sees: the noisy mask, then the image, as channels (:func:`network_input`);
- what the network predicts: epsilon (the paper's), x0 itself or v, as the scheduler's
  ``prediction_type`` says (:func:`prediction_target` for training, :func:`predicted_x0` for
  sampling, each the other's inverse);
- the posterior q(x_{t-1} | x_t, x0) of the forward process (:func:`posterior`), which the DDPM
  sampler draws from and the hybrid loss compares the network's reverse step with;
- the learned variance (:meth:`Posterior.learned_log_variance`): with the scheduler's
  ``variance_type: learned_range`` the network also outputs v in [-1, 1] per mask channel, after
  its C predictions, which sets the reverse step's log variance between the posterior's and
  log beta_t.

Masks are diffused as x0 in {-1, +1} (:func:`mask_to_x0`) and samples read back as
probabilities in [0, 1] (:func:`x0_to_probability`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from monai.networks.schedulers import Scheduler

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
"""What the network may be trained to predict (MONAI schedulers' ``prediction_type``)."""

LEARNED_VARIANCE = "learned_range"
"""The scheduler ``variance_type`` under which the network also predicts its variance."""


def learns_variance(scheduler: Scheduler | None) -> bool:
    """Whether a network trained with this scheduler outputs a variance channel per mask channel
    (after its C prediction channels)."""
    return getattr(scheduler, "variance_type", None) == LEARNED_VARIANCE


def prediction_type(scheduler: Scheduler | None) -> str:
    """The scheduler's ``prediction_type`` (epsilon when it has none), checked."""
    kind = getattr(scheduler, "prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {kind!r} is not one of {PREDICTION_TYPES}")
    return kind


def mask_to_x0(mask: torch.Tensor) -> torch.Tensor:
    """Binary masks {0, 1} become diffusion samples in {-1, +1}, centred like the noise."""
    return mask * 2.0 - 1.0


def x0_to_probability(x0: torch.Tensor) -> torch.Tensor:
    """A sampled x0 in [-1, 1] read back as a mask probability in [0, 1]."""
    return ((x0 + 1) / 2).clamp(0, 1)


def network_input(x_t: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The network's input: the noisy mask's C channels, then the image's four (the order of
    MONAI's ``DiffusionInferer(mode="concat")`` and of the metadata's ``image`` input)."""
    return torch.cat([x_t, image], dim=1)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One value per sample, shaped to broadcast over a batch ``like``."""
    return values.view((-1,) + (1,) * (like.ndim - 1))


def prediction_target(
    scheduler: Scheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the network learns to predict for x_t = sqrt(abar) x0 + sqrt(1 - abar) noise."""
    kind = prediction_type(scheduler)
    if kind == "sample":
        return x0
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    return noise


def alpha_bar(scheduler: Scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """abar_t of each timestep, in float64 on the timesteps' device (what every coefficient of
    the forward process is computed from)."""
    return scheduler.alphas_cumprod.to(timesteps.device, torch.float64)[timesteps]


def predicted_x0(
    scheduler: Scheduler, output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The x0 that a network's prediction implies (the inverse of :func:`prediction_target`);
    coefficients in float64, then in the state's dtype."""
    abar = _per_sample(alpha_bar(scheduler, timesteps.to(x_t.device)), x_t)
    signal, noise = abar.sqrt().to(x_t.dtype), (1.0 - abar).sqrt().to(x_t.dtype)
    kind = prediction_type(scheduler)
    if kind == "sample":
        return output
    if kind == "v_prediction":
        return signal * x_t - noise * output
    return (x_t - noise * output) / signal


class Posterior(NamedTuple):
    """q(x_{t-1} | x_t, x0) = N(coef_x0 x0 + coef_xt x_t, exp(log_variance)), and log beta_t,
    the upper end of a learned variance's range; float64, one value per timestep."""

    coef_x0: torch.Tensor
    coef_xt: torch.Tensor
    log_variance: torch.Tensor
    log_beta: torch.Tensor

    def at(self, t: int | torch.Tensor, like: torch.Tensor | None = None) -> Posterior:
        """The terms at timestep ``t``, or at one timestep per sample of a batch ``like``."""
        if like is None:
            return Posterior(*(values[t] for values in self))
        return Posterior(*(_per_sample(values[t], like) for values in self))

    def mean(self, x0: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        return self.coef_x0 * x0 + self.coef_xt * x_t

    def learned_log_variance(self, v: torch.Tensor) -> torch.Tensor:
        """f log beta_t + (1 - f) log beta_tilde_t, f = (v + 1) / 2, from the network's variance
        output v (Nichol & Dhariwal 2021; the paper's code's ``learn_sigma=True``)."""
        frac = (v + 1.0) / 2.0
        return frac * self.log_beta + (1.0 - frac) * self.log_variance


def posterior(alphas_cumprod: torch.Tensor) -> Posterior:
    """The posterior of the forward process at every timestep of a schedule.

    With beta_t = 1 - abar_t / abar_{t-1} read off ``alphas_cumprod`` (abar_{-1} = 1): mean
    coefficients sqrt(abar_{t-1}) beta_t / (1 - abar_t) and sqrt(1 - beta_t) (1 - abar_{t-1}) /
    (1 - abar_t), variance beta_tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t). At t = 0 the
    mean is x0 and the variance 0; its log is clipped to that of t = 1 there, as
    guided-diffusion's ``posterior_log_variance_clipped`` (the samplers return x0 at t = 0 and
    never draw from it).
    """
    abar = alphas_cumprod.detach().double()
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    beta = 1.0 - abar / abar_prev
    log_variance = (beta * (1.0 - abar_prev) / (1.0 - abar)).clamp(min=1e-20).log()
    log_variance[0] = log_variance[1]
    return Posterior(
        coef_x0=abar_prev.sqrt() * beta / (1.0 - abar),
        coef_xt=(1.0 - beta).sqrt() * (1.0 - abar_prev) / (1.0 - abar),
        log_variance=log_variance,
        log_beta=beta.clamp(min=1e-20).log(),
    )
