"""The diffusion training step: the tumour mask is x0, the MR image is the condition.

With a learned variance (the scheduler's ``variance_type: learned_range``, the paper's code's
``learn_sigma=True``) the network has two outputs per mask channel, the prediction and the
variance interpolation v, trained with the hybrid loss of Nichol & Dhariwal (2021):
MSE on the prediction plus the variational bound for the variance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from monai.engines.utils import DiffusionPrepareBatch
from monai.networks.schedulers import Scheduler
from torch import nn

from bundle.diffusion.samplers import predicted_x0

LEARNED_VARIANCE = "learned_range"
"""The scheduler ``variance_type`` under which the network also predicts its variance."""


def learns_variance(scheduler: Scheduler | None) -> bool:
    """Whether a network trained with this scheduler outputs a variance channel per mask channel."""
    return getattr(scheduler, "variance_type", None) == LEARNED_VARIANCE


class HybridTarget(NamedTuple):
    """What the hybrid loss needs besides the network output: its MSE target, the clean x0, the
    noisy x_t the network saw and the timesteps."""

    target: torch.Tensor
    x0: torch.Tensor
    x_t: torch.Tensor
    timesteps: torch.Tensor


def mask_to_x0(mask: torch.Tensor) -> torch.Tensor:
    """Binary masks {0, 1} become diffusion samples in {-1, +1}, centred like the noise."""
    return mask * 2.0 - 1.0


class MaskDiffusionPrepareBatch(DiffusionPrepareBatch):
    """MONAI's diffusion batch preparation with the roles of the keys swapped.

    ``DiffusionPrepareBatch`` noises the batch's ``image``; here the mask (``label``) is noised and
    the image is concatenated to it (``mode="concat"``, noisy mask first, as
    ``DiffusionInferer`` and the sampling code both do).
    """

    def __init__(
        self,
        num_train_timesteps: int,
        mask_key: str = "label",
        condition_key: str = "image",
        scheduler: Scheduler | None = None,
    ) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps, condition_name=condition_key)
        self.mask_key = mask_key
        self.scheduler = scheduler
        self.prediction_type = getattr(scheduler, "prediction_type", "epsilon")

    def get_target(
        self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """What the network learns to predict: the noise (the paper's), x0 or v, as the
        scheduler's ``prediction_type`` says (the samplers read the same attribute)."""
        if self.prediction_type == "sample":
            return images
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(images, noise, timesteps)
        return noise

    def __call__(
        self,
        batchdata: Mapping[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        x0 = mask_to_x0(batchdata[self.mask_key].to(device, non_blocking=non_blocking, **kwargs))
        noise = self.get_noise(x0)
        timesteps = self.get_timesteps(x0)
        condition = batchdata[self.condition_name].to(device, non_blocking=non_blocking, **kwargs)
        infer_kwargs = {
            "noise": noise,
            "timesteps": timesteps,
            "condition": condition,
            "mode": "concat",
        }
        target = self.get_target(x0, noise, timesteps)
        if learns_variance(self.scheduler):  # DiffusionInferer noises x0 the same way
            x_t = self.scheduler.add_noise(x0, noise, timesteps)
            target = HybridTarget(target, x0, x_t, timesteps)
        return x0, target, (), infer_kwargs


def posterior(
    abar: torch.Tensor, abar_prev: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log variance of q(x_{t-1} | x_t, x0); ``abar`` broadcasts to x. The variance is 0
    at t = 0 (abar_prev = 1): callers clip it there, as guided-diffusion does."""
    beta = 1.0 - abar / abar_prev
    mean = (abar_prev.sqrt() * beta * x0 + (1.0 - beta).sqrt() * (1.0 - abar_prev) * x_t) / (
        1.0 - abar
    )
    return mean, (beta * (1.0 - abar_prev) / (1.0 - abar)).clamp(min=1e-20).log()


class HybridLoss(nn.Module):
    """MSE on the prediction + ``vlb_weight`` x the variational bound term for the variance.

    The network output holds C prediction channels, then C channels v in [-1, 1] that set the
    log variance of p(x_{t-1} | x_t) between log beta_tilde_t (v = -1) and log beta_t (v = +1).
    The bound term is KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) in bits per dimension (at
    t = 0 the negative log-likelihood of x0 under the Gaussian decoder), with the mean from the
    prediction held fixed (stop-gradient), so that only the variance learns from it, as in
    Nichol & Dhariwal (2021) and the paper's guided-diffusion code (``vlb_weight`` 1, its
    ``rescale_learned_sigmas=False``).
    """

    def __init__(self, scheduler: Scheduler, vlb_weight: float = 1.0) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.vlb_weight = vlb_weight

    def forward(self, output: torch.Tensor, target: HybridTarget) -> torch.Tensor:
        prediction, v = output.chunk(2, dim=1)
        mse = (prediction - target.target).pow(2).flatten(1).mean(1)
        x0_hat = predicted_x0(self.scheduler, prediction.detach(), target.x_t, target.timesteps)
        return mse + self.vlb_weight * self.bound(x0_hat, v, target)

    def bound(self, x0_hat: torch.Tensor, v: torch.Tensor, target: HybridTarget) -> torch.Tensor:
        """Per-sample variational bound term (bits per dimension) for a predicted x0 and v."""
        abar_all = self.scheduler.alphas_cumprod.to(v.device, torch.float64)
        t = target.timesteps
        first = (t == 0).view((-1,) + (1,) * (v.ndim - 1))
        abar = abar_all[t].view(first.shape)
        abar_prev = torch.where(t > 0, abar_all[(t - 1).clamp(min=0)], 1.0).view(first.shape)
        x0, x_t, v = target.x0.double(), target.x_t.double(), v.double()
        true_mean, true_log_var = posterior(abar, abar_prev, x0, x_t)
        # clipped: at t = 0, where the posterior variance is 0, the value of t = 1 stands in
        clipped = posterior(abar_all[1], abar_all[0], x0, x_t)[1]
        true_log_var = torch.where(first, clipped, true_log_var)
        model_mean, _ = posterior(abar, abar_prev, x0_hat.double(), x_t)
        log_beta = (1.0 - abar / abar_prev).clamp(min=1e-20).log()
        frac = (v + 1.0) / 2.0
        model_log_var = frac * log_beta + (1.0 - frac) * true_log_var
        kl = 0.5 * (
            -1.0
            + model_log_var
            - true_log_var
            + (true_log_var - model_log_var).exp()
            + (true_mean - model_mean).pow(2) * (-model_log_var).exp()
        )
        nll = -_discretized_gaussian_log_likelihood(x0, model_mean, model_log_var)
        per_voxel = torch.where(first, nll, kl) / math.log(2.0)
        return per_voxel.flatten(1).mean(1).to(target.x_t.dtype)


def _discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor
) -> torch.Tensor:
    """Log-likelihood of x in [-1, 1] under a Gaussian discretised to 256 bins (guided-diffusion's
    decoder at t = 0), per voxel."""
    std_normal = torch.distributions.Normal(0.0, 1.0)
    inv_std = (-0.5 * log_var).exp()
    upper = std_normal.cdf(inv_std * (x - mean + 1.0 / 255.0))
    lower = std_normal.cdf(inv_std * (x - mean - 1.0 / 255.0))
    log_upper = upper.clamp(min=1e-12).log()
    log_one_minus_lower = (1.0 - lower).clamp(min=1e-12).log()
    log_delta = (upper - lower).clamp(min=1e-12).log()
    return torch.where(
        x < -0.999, log_upper, torch.where(x > 0.999, log_one_minus_lower, log_delta)
    )
