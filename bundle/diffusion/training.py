"""The diffusion training step: the tumour mask is x0, the MR image is the condition.

:class:`MaskDiffusionPrepareBatch` draws the noise and timesteps and the target,
:class:`MaskDiffusionInferer` runs the network on the noised mask next to the image, and
:func:`diffusion_loss` compares its output with the target. With a learned variance (the
scheduler's ``variance_type: learned_range``, the paper's code's ``learn_sigma=True``) the
network has two outputs per mask channel, the prediction and the variance interpolation v,
trained with the hybrid loss of Nichol & Dhariwal (2021): MSE on the prediction plus the
variational bound for the variance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from monai.engines.utils import DiffusionPrepareBatch
from monai.inferers import Inferer
from monai.losses import DiceLoss
from monai.networks.schedulers import Scheduler
from torch import nn

from bundle.diffusion.process import (
    PREDICTION_TYPES,
    alpha_bar,
    learns_variance,
    mask_to_x0,
    network_input,
    posterior,
    predicted_x0,
    prediction_target,
    prediction_type,
    x0_to_probability,
)


class HybridTarget(NamedTuple):
    """What the hybrid loss needs besides the network output: its MSE target, the clean x0, the
    noisy x_t the network saw and the timesteps."""

    target: torch.Tensor
    x0: torch.Tensor
    x_t: torch.Tensor
    timesteps: torch.Tensor


LOSS_WEIGHTINGS = ("uniform", *PREDICTION_TYPES)
"""How the MSE of each training sample is weighted over timesteps: ``uniform`` (the MSE on what
the network predicts, every timestep alike), or a prediction type: the loss that a network
predicting that would have, from the same output (the MSE of the output's implied epsilon, x0 or
v). For an x0 network ``v_prediction`` weights by 1 + SNR(t), the "SNR+1" weighting of Salimans &
Ho (2022): it separates what a prediction type's weighting does from what its parameterisation
does."""


class WeightedTarget(NamedTuple):
    """An MSE target with one loss weight per sample (from its timestep)."""

    target: torch.Tensor
    weight: torch.Tensor


class MaskDiceTarget(NamedTuple):
    """A :class:`WeightedTarget` and what :class:`MaskDiceLoss` needs to read the x0 that the
    network's output implies: the noisy x_t it saw, the timesteps and the clean x0."""

    weighted: WeightedTarget
    x0: torch.Tensor
    x_t: torch.Tensor
    timesteps: torch.Tensor


def _loss_scale(kind: str, abar: torch.Tensor) -> torch.Tensor:
    """A prediction type's squared error per unit of x0's, times 1 - abar (x_t fixed): epsilon
    abar, x0 1 - abar, v 1."""
    return {"epsilon": abar, "sample": 1.0 - abar, "v_prediction": torch.ones_like(abar)}[kind]


def timestep_weight(scheduler: Scheduler, timesteps: torch.Tensor, weighting: str) -> torch.Tensor:
    """The loss weight of each sample at its timestep, by one of :data:`LOSS_WEIGHTINGS`."""
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss_weighting {weighting!r} is not one of {LOSS_WEIGHTINGS}")
    if weighting == "uniform":
        return torch.ones(timesteps.shape, dtype=torch.float32, device=timesteps.device)
    abar = alpha_bar(scheduler, timesteps)
    own = _loss_scale(prediction_type(scheduler), abar)
    return (_loss_scale(weighting, abar) / own).float()


class MaskDiffusionPrepareBatch(DiffusionPrepareBatch):
    """MONAI's diffusion batch preparation with the roles of the keys swapped.

    ``DiffusionPrepareBatch`` noises the batch's ``image``; here the mask (``label``) is x0 and
    the image is the condition that :class:`MaskDiffusionInferer` puts next to the noisy mask.
    The target is what the scheduler's ``prediction_type`` says the network predicts (see
    :func:`bundle.diffusion.process.prediction_target`), and with a learned variance a
    :class:`HybridTarget` for :class:`HybridLoss` (which weights its MSE term itself); else, with
    a loss weighting other than uniform, a :class:`WeightedTarget` for :class:`WeightedMSELoss`;
    with ``mask_dice_weight`` above 0 a :class:`MaskDiceTarget` for :class:`MaskDiceLoss`.

    Args:
        num_train_timesteps: timesteps are drawn uniformly from [0, num_train_timesteps).
        mask_key: the batch's binary mask channels, diffused as x0 in {-1, +1}.
        condition_key: the batch's image.
        scheduler: the noise scheduler of training (its prediction and variance types).
        loss_weighting: one of :data:`LOSS_WEIGHTINGS`.
        mask_dice_weight: above 0, the targets carry what :class:`MaskDiceLoss` needs (give
            :func:`diffusion_loss` the same weight).
    """

    def __init__(
        self,
        num_train_timesteps: int,
        mask_key: str = "label",
        condition_key: str = "image",
        scheduler: Scheduler | None = None,
        loss_weighting: str = "uniform",
        mask_dice_weight: float = 0.0,
    ) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps, condition_name=condition_key)
        self.mask_key = mask_key
        self.scheduler = scheduler
        self.loss_weighting = loss_weighting
        self.mask_dice_weight = mask_dice_weight

    def get_target(
        self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """What the network learns to predict: the noise (the paper's), x0 or v."""
        return prediction_target(self.scheduler, images, noise, timesteps)

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
        infer_kwargs = {"noise": noise, "timesteps": timesteps, "condition": condition}
        target = self.get_target(x0, noise, timesteps)
        if learns_variance(self.scheduler):  # MaskDiffusionInferer noises x0 the same way
            x_t = self.scheduler.add_noise(x0, noise, timesteps)
            return x0, HybridTarget(target, x0, x_t, timesteps), (), infer_kwargs
        if self.loss_weighting != "uniform" or self.mask_dice_weight > 0:
            weight = timestep_weight(self.scheduler, timesteps, self.loss_weighting)
            target = WeightedTarget(target, weight)
        if self.mask_dice_weight > 0:
            x_t = self.scheduler.add_noise(x0, noise, timesteps)
            target = MaskDiceTarget(target, x0, x_t, timesteps)
        return x0, target, (), infer_kwargs


class MaskDiffusionInferer(Inferer):
    """The training forward pass: x0 noised to x_t by the scheduler, and the network's
    prediction from :func:`bundle.diffusion.process.network_input` (x_t, then the image), the
    input the samplers give it at inference. MONAI's ``DiffusionInferer(mode="concat")`` in the
    same order, with the order written in one place.

    Args:
        scheduler: the noise scheduler of training.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        super().__init__()
        self.scheduler = scheduler

    def __call__(  # type: ignore[override]  # the keywords MaskDiffusionPrepareBatch gives
        self,
        inputs: torch.Tensor,
        network: Callable[..., torch.Tensor],
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        condition: torch.Tensor,
    ) -> torch.Tensor:
        x_t = self.scheduler.add_noise(original_samples=inputs, noise=noise, timesteps=timesteps)
        return network(x=network_input(x_t, condition), timesteps=timesteps)


def diffusion_loss(
    scheduler: Scheduler, loss_weighting: str = "uniform", mask_dice_weight: float = 0.0
) -> nn.Module:
    """The loss of the network's output: MSE on the prediction, or the :class:`HybridLoss` when
    the scheduler says the network learns its variance (``learn_sigma`` in the configs); either
    MSE weighted over timesteps by ``loss_weighting`` (:data:`LOSS_WEIGHTINGS`). With
    ``mask_dice_weight`` above 0 (no learned variance) the MSE plus that weight times the Dice
    loss of the mask the output implies (:class:`MaskDiceLoss`)."""
    if learns_variance(scheduler):
        if mask_dice_weight > 0:
            raise ValueError("mask_dice_weight needs learn_sigma false (the hybrid loss has none)")
        return HybridLoss(scheduler, loss_weighting=loss_weighting)
    if mask_dice_weight > 0:
        return MaskDiceLoss(scheduler, mask_dice_weight)
    return nn.MSELoss() if loss_weighting == "uniform" else WeightedMSELoss()


class WeightedMSELoss(nn.Module):
    """The mean over samples of each sample's MSE times its :class:`WeightedTarget` weight."""

    def forward(self, output: torch.Tensor, target: WeightedTarget) -> torch.Tensor:
        per_sample = (output - target.target).pow(2).flatten(1).mean(1)
        return (target.weight.to(per_sample.dtype) * per_sample).mean()


class MaskDiceLoss(nn.Module):
    """The weighted MSE plus ``dice_weight`` x MONAI's Dice loss (over the batch) of the mask
    probability that the output's implied x0 reads as, against the true mask: a segmentation
    loss on the denoised mask at every timestep, as diffusion segmentation models after the
    paper add (e.g. MedSegDiff), measured in docs/uncertainty.md."""

    def __init__(self, scheduler: Scheduler, dice_weight: float) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.dice_weight = dice_weight
        self.mse = WeightedMSELoss()
        self.dice = DiceLoss(batch=True)

    def forward(self, output: torch.Tensor, target: MaskDiceTarget) -> torch.Tensor:
        x0_hat = predicted_x0(self.scheduler, output, target.x_t, target.timesteps)
        dice = self.dice(x0_to_probability(x0_hat), x0_to_probability(target.x0))
        return self.mse(output, target.weighted) + self.dice_weight * dice


class HybridLoss(nn.Module):
    """MSE on the prediction (weighted over timesteps by ``loss_weighting``) + ``vlb_weight`` x
    the variational bound term for the variance.

    The network output holds C prediction channels, then C channels v in [-1, 1] that set the
    log variance of p(x_{t-1} | x_t) between log beta_tilde_t (v = -1) and log beta_t (v = +1).
    The bound term is KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) in bits per dimension (at
    t = 0 the negative log-likelihood of x0 under the Gaussian decoder), with the mean from the
    prediction held fixed (stop-gradient), so that only the variance learns from it, as in
    Nichol & Dhariwal (2021) and the paper's guided-diffusion code (``vlb_weight`` 1, its
    ``rescale_learned_sigmas=False``).
    """

    def __init__(
        self, scheduler: Scheduler, vlb_weight: float = 1.0, loss_weighting: str = "uniform"
    ) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.vlb_weight = vlb_weight
        self.loss_weighting = loss_weighting

    def forward(self, output: torch.Tensor, target: HybridTarget) -> torch.Tensor:
        prediction, v = output.chunk(2, dim=1)
        mse = (prediction - target.target).pow(2).flatten(1).mean(1)
        mse = mse * timestep_weight(self.scheduler, target.timesteps, self.loss_weighting)
        x0_hat = predicted_x0(self.scheduler, prediction.detach(), target.x_t, target.timesteps)
        return mse + self.vlb_weight * self.bound(x0_hat, v, target)

    def bound(self, x0_hat: torch.Tensor, v: torch.Tensor, target: HybridTarget) -> torch.Tensor:
        """Per-sample variational bound term (bits per dimension) for a predicted x0 and v."""
        t = target.timesteps
        first = (t == 0).view((-1,) + (1,) * (v.ndim - 1))
        q = posterior(self.scheduler.alphas_cumprod.to(v.device)).at(t, like=v)
        x0, x_t = target.x0.double(), target.x_t.double()
        true_mean, true_log_var = q.mean(x0, x_t), q.log_variance
        model_mean = q.mean(x0_hat.double(), x_t)
        model_log_var = q.learned_log_variance(v.double())
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
