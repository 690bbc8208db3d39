"""The hybrid loss of a learned-variance model: MSE + variational bound, checked against
torch.distributions and against the gradients it must (not) give."""

from __future__ import annotations

import math

import torch
from monai.networks.schedulers import DDPMScheduler

from bundle.diffusion.training import HybridLoss, HybridTarget, MaskDiffusionPrepareBatch

SCHEDULER = DDPMScheduler(variance_type="learned_range")
ABAR = SCHEDULER.alphas_cumprod.double()


def batch(timesteps: list[int], seed: int = 0) -> tuple[HybridTarget, torch.Tensor]:
    """A noised batch of masks through the bundle's own prepare-batch, and its true noise."""
    generator = torch.Generator().manual_seed(seed)
    mask = (torch.rand(len(timesteps), 1, 8, 8, generator=generator) > 0.5).float()
    prepare = MaskDiffusionPrepareBatch(1000, scheduler=SCHEDULER)
    _, target, _, kwargs = prepare({"label": mask, "image": torch.zeros(len(timesteps), 4, 8, 8)})
    t = torch.tensor(timesteps)
    x0 = mask * 2 - 1
    x_t = SCHEDULER.add_noise(x0, kwargs["noise"], t)
    return HybridTarget(target.target, x0, x_t, t), kwargs["noise"]


def test_prepare_batch_gives_what_the_loss_needs():
    target, noise = batch([3, 500])
    torch.testing.assert_close(target.target, noise)  # epsilon prediction
    assert target.x0.unique().tolist() in ([-1.0, 1.0], [-1.0], [1.0])


def test_bound_is_the_gaussian_kl_in_bits():
    target, noise = batch([1, 40, 700])
    generator = torch.Generator().manual_seed(1)
    eps_hat = noise + 0.3 * torch.randn(noise.shape, generator=generator)
    v = torch.rand(noise.shape, generator=generator) * 2 - 1
    loss = HybridLoss(SCHEDULER)
    x0_hat = target.x_t - (1 - ABAR[target.timesteps]).sqrt().view(-1, 1, 1, 1).float() * eps_hat
    x0_hat = x0_hat / ABAR[target.timesteps].sqrt().view(-1, 1, 1, 1).float()
    bound = loss.bound(x0_hat, v, target)
    # independent reference: the two Gaussians written out, KL by torch.distributions
    t = target.timesteps.view(-1, 1, 1, 1)
    abar, abar_prev = ABAR[t], ABAR[t - 1]
    beta = 1 - abar / abar_prev
    tilde = beta * (1 - abar_prev) / (1 - abar)

    def mean(x0: torch.Tensor) -> torch.Tensor:
        return (abar_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - abar_prev) * target.x_t) / (
            1 - abar
        )

    frac = (v.double() + 1) / 2
    model_var = torch.exp(frac * beta.log() + (1 - frac) * tilde.log())
    q = torch.distributions.Normal(mean(target.x0.double()), tilde.sqrt())
    p = torch.distributions.Normal(mean(x0_hat.double()), model_var.sqrt())
    expected = torch.distributions.kl_divergence(q, p).flatten(1).mean(1) / math.log(2)
    torch.testing.assert_close(bound.double(), expected, rtol=1e-4, atol=1e-6)


def test_exact_prediction_and_posterior_variance_cost_nothing():
    target, noise = batch([5, 300, 999])
    output = torch.cat([noise, -torch.ones_like(noise)], dim=1)  # v = -1: beta_tilde
    loss = HybridLoss(SCHEDULER)(output, target)
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, torch.zeros(3), atol=1e-6, rtol=0)


def test_bound_trains_only_the_variance():
    target, noise = batch([2, 60, 400, 0])
    generator = torch.Generator().manual_seed(2)
    prediction = (noise + 0.5 * torch.randn(noise.shape, generator=generator)).requires_grad_()
    v = torch.zeros_like(noise, requires_grad=True)
    HybridLoss(SCHEDULER, vlb_weight=1.0)(torch.cat([prediction, v], 1), target).sum().backward()
    with_bound = prediction.grad.clone()
    prediction.grad = None
    mse = (prediction - target.target).pow(2).flatten(1).mean(1).sum()
    mse.backward()
    torch.testing.assert_close(with_bound, prediction.grad)  # the stop-gradient on the mean
    assert v.grad.abs().sum() > 0


def test_first_step_is_the_decoder_likelihood():
    """At t = 0 the term is the discretised-Gaussian NLL of x0 (in bits): under a bit when the
    mean is right (x0 = +-1 is an end bin, half of whose mass the decoder's std of 0.0074 puts
    beyond the bin's edge at 1/255), large when the mean is on the wrong side."""
    target, _ = batch([0])
    loss = HybridLoss(SCHEDULER)
    x0 = target.x0
    right = loss.bound(x0, -torch.ones_like(x0), target)
    wrong = loss.bound(-x0, -torch.ones_like(x0), target)
    assert right.item() < 1 and wrong.item() > 30  # 39.9 bits: the 1e-12 floor, as guided-diffusion
