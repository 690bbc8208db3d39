"""Samplers on toy problems with known answers: an exact-noise oracle, a Gaussian and a two-point
data distribution, whose optimal epsilon-predictors are analytic."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from bundle.diffusion import samplers
from bundle.diffusion.samplers import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverPP2MSampler,
    Sampler,
    make_sampler,
    spaced_timesteps,
)
from bundle.diffusion.training import MaskDiffusionPrepareBatch

SCHEDULER = DDPMScheduler()
ABAR = SCHEDULER.alphas_cumprod.double()


def _abar(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return ABAR[t].to(like).view(-1, *[1] * (like.ndim - 1))


def exact_noise(x0: torch.Tensor):
    """The noise that x_t actually contains if the clean sample is ``x0``."""

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = _abar(t, x_t)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    return denoise


def gaussian_eps(mu: float, sd: float):
    """E[eps | x_t] for x0 ~ N(mu, sd^2): x_t ~ N(sqrt(a) mu, a sd^2 + 1 - a)."""

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = _abar(t, x_t)
        return (1 - a).sqrt() * (x_t - a.sqrt() * mu) / (a * sd**2 + 1 - a)

    return denoise


def two_point_eps(p: float):
    """E[eps | x_t] for x0 = +1 with probability p, else -1: E[x0 | x_t] = tanh(logit / 2)."""

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = _abar(t, x_t)
        logit = math.log(p / (1 - p)) + 2 * a.sqrt() * x_t / (1 - a)
        return (x_t - a.sqrt() * torch.tanh(logit / 2)) / (1 - a).sqrt()

    return denoise


def gaussian_flow_endpoint(x_T: torch.Tensor, mu: float, sd: float) -> torch.Tensor:
    """Exact probability-flow ODE solution from t = T-1 to t = 0 for Gaussian data (the standardised
    x_t is invariant along the flow), followed by the samplers' final x0 prediction at t = 0."""
    a_T, a_0 = ABAR[-1].item(), ABAR[0].item()
    std_T, std_0 = math.sqrt(a_T * sd**2 + 1 - a_T), math.sqrt(a_0 * sd**2 + 1 - a_0)
    z = (x_T - math.sqrt(a_T) * mu) / std_T
    return mu + math.sqrt(a_0) * sd**2 / std_0 * z


def _noise(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize(
    ("name", "num_steps"),
    [("ddpm", 1000), ("ddim", 5), ("ddim", 10), ("ddim", 50)]
    + [("dpmpp_2m", 5), ("dpmpp_2m", 10), ("dpmpp_2m", 20)],
)
def test_exact_noise_oracle_recovers_x0(name: str, num_steps: int) -> None:
    x0 = _noise(2, 1, 8, 8, seed=1).clamp(-1, 1)
    sampler = make_sampler(name, num_steps)
    assert sampler.num_steps == num_steps
    generator = torch.Generator().manual_seed(2)
    out = sampler.sample(exact_noise(x0), _noise(2, 1, 8, 8), generator=generator)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def test_spaced_timesteps() -> None:
    assert spaced_timesteps(1000, 10) == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert spaced_timesteps(1000, 1000) == list(range(999, -1, -1))
    for k in (1, 7, 50, 999):
        steps = spaced_timesteps(1000, k)
        assert len(set(steps)) == k and steps == sorted(steps, reverse=True) and steps[0] == 999
    with pytest.raises(ValueError):
        spaced_timesteps(1000, 1001)


@pytest.mark.parametrize(
    "sampler", [DDIMSampler(SCHEDULER, 10), DPMSolverPP2MSampler(SCHEDULER, 10)]
)
def test_steps_land_on_the_next_timestep(sampler: Sampler) -> None:
    """With the exact-noise oracle, the deterministic samplers keep the initial noise, so the state
    seen at each timestep t must be the forward-process sample sqrt(a_t) x0 + sqrt(1 - a_t) eps;
    a step to any other timestep (as in MONAI's DDIMScheduler.step) would break this."""
    x0 = _noise(3, 1, 4, 4, seed=1, dtype=torch.float64).clamp(-1, 1)
    x_T = _noise(3, 1, 4, 4, dtype=torch.float64)
    a_T = ABAR[-1]
    eps = (x_T - a_T.sqrt() * x0) / (1 - a_T).sqrt()
    oracle, seen = exact_noise(x0), []

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.int64 and t.shape == (3,)
        seen.append((int(t[0]), x_t.clone()))
        return oracle(x_t, t)

    sampler.sample(denoise, x_T)
    assert [t for t, _ in seen] == sampler.timesteps == spaced_timesteps(1000, 10)
    for t, x_t in seen:
        torch.testing.assert_close(x_t, ABAR[t].sqrt() * x0 + (1 - ABAR[t]).sqrt() * eps)


def test_convergence_order_on_gaussian_data() -> None:
    """DDIM is first order and DPM-Solver++(2M) second order towards the exact flow endpoint."""
    mu, sd = 0.0, 0.3
    x_T = _noise(1, 256, dtype=torch.float64)
    target = gaussian_flow_endpoint(x_T, mu, sd)

    def error(sampler: Sampler) -> float:
        return (sampler.sample(gaussian_eps(mu, sd), x_T) - target).abs().max().item()

    ddim = [error(DDIMSampler(SCHEDULER, k)) for k in (250, 500, 1000)]
    dpm = [error(DPMSolverPP2MSampler(SCHEDULER, k)) for k in (250, 500, 1000)]
    assert ddim[-1] < 1e-2 and dpm[-1] < 1e-3
    assert all(1.7 < coarse / fine < 2.3 for coarse, fine in pairwise(ddim))
    assert all(3.4 < coarse / fine < 4.6 for coarse, fine in pairwise(dpm))


def test_ddpm_matches_gaussian_statistics() -> None:
    """Ancestral samples end with the x0 prediction at t = 0, i.e. the posterior mean
    E[x0 | x_0], whose std is a_0 sd^2 / std(x_0) (0.5% below sd)."""
    mu, sd = 0.2, 0.2
    out = DDPMSampler(SCHEDULER).sample(
        gaussian_eps(mu, sd), _noise(1, 1, 128, 128), generator=torch.Generator().manual_seed(3)
    )
    a_0 = ABAR[0].item()
    expected_sd = math.sqrt(a_0) * sd**2 / math.sqrt(a_0 * sd**2 + 1 - a_0)
    assert abs(out.mean().item() - mu) < 0.01
    assert abs(out.std().item() / expected_sd - 1) < 0.03


def test_samplers_agree_on_two_point_data() -> None:
    """The probability-flow samplers agree with each other, and all samplers reproduce P(+1) = p."""
    p, x_T = 0.3, _noise(1, 1, 64, 64)
    denoise = two_point_eps(p)
    ddim = DDIMSampler(SCHEDULER, 1000).sample(denoise, x_T)
    dpm = DPMSolverPP2MSampler(SCHEDULER, 20).sample(denoise, x_T)
    ddpm = DDPMSampler(SCHEDULER).sample(denoise, x_T, generator=torch.Generator().manual_seed(4))
    assert (ddim - dpm).abs().mean() < 0.01
    assert (ddim.sign() != dpm.sign()).float().mean() < 0.01
    for out in (ddim, dpm, ddpm):
        assert abs((out > 0).float().mean().item() - p) < 0.03


def test_ddpm_is_ddim_with_eta_one_over_all_steps() -> None:
    """Same posterior mean and variance, and the same noise draws from the same generator."""
    denoise, x_T = two_point_eps(0.3), _noise(1, 1, 16, 16)
    ddpm = DDPMSampler(SCHEDULER).sample(denoise, x_T, generator=torch.Generator().manual_seed(5))
    ddim = DDIMSampler(SCHEDULER, 1000, eta=1.0).sample(
        denoise, x_T, generator=torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(ddpm, ddim, atol=1e-4, rtol=0)


@pytest.mark.parametrize("sampler", [DDPMSampler(SCHEDULER), DDIMSampler(SCHEDULER, 20, eta=0.5)])
def test_generator_seed_determines_stochastic_samples(sampler: Sampler) -> None:
    denoise, x_T = gaussian_eps(0.0, 0.5), _noise(1, 1, 8, 8)

    def run(seed: int) -> torch.Tensor:
        return sampler.sample(denoise, x_T, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))


def test_output_is_clipped_and_progress_called_per_step() -> None:
    calls = []
    sampler = make_sampler("dpmpp_2m", 7)
    out = sampler.sample(
        gaussian_eps(0.0, 3.0), 3 * _noise(2, 1, 8, 8), progress=lambda: calls.append(1)
    )
    assert len(calls) == 7
    assert out.abs().max() <= 1 and out.abs().max() == 1


def test_make_sampler() -> None:
    assert isinstance(make_sampler("ddim", 10, eta=0.5), DDIMSampler)
    assert make_sampler("ddim", 10, eta=0.5).eta == 0.5
    assert isinstance(make_sampler("dpmpp_2m", 10), DPMSolverPP2MSampler)
    assert isinstance(make_sampler("ddpm", 1000), DDPMSampler)
    with pytest.warns(UserWarning, match="ignoring num_steps=50"):
        assert make_sampler("ddpm", 50).num_steps == 1000
    small = DDPMScheduler(num_train_timesteps=100)
    assert make_sampler("ddim", 100, scheduler=small).timesteps == list(range(99, -1, -1))
    with pytest.raises(ValueError, match="ddpm, ddim, dpmpp_2m"):
        make_sampler("euler", 10)
    with pytest.raises(ValueError, match="num_steps"):
        make_sampler("ddim", 0)
    with pytest.raises(ValueError, match="eta"):
        make_sampler("ddim", 10, eta=-0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp_2m"])
def test_cuda(name: str) -> None:
    x0 = _noise(2, 1, 8, 8, seed=1).clamp(-1, 1).cuda()
    generator = torch.Generator(device="cuda").manual_seed(0)
    noise = torch.randn(x0.shape, generator=generator, device="cuda")
    sampler = make_sampler(name, 1000 if name == "ddpm" else 10, eta=0.5 if name == "ddim" else 0.0)
    result = sampler.sample(exact_noise(x0), noise, generator=generator)
    assert result.device == x0.device
    torch.testing.assert_close(result, x0, atol=1e-4, rtol=0)


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
@pytest.mark.parametrize("name, steps", [("ddim", 5), ("dpmpp_2m", 10), ("ddpm", 1000)])
def test_other_prediction_types_reach_the_same_x0(prediction_type, name, steps):
    """A network trained to predict x0 or v (the scheduler says which) gives the same samples as
    the exact-noise oracle: the samplers convert its output, and training targets match it."""
    scheduler = DDPMScheduler(prediction_type=prediction_type)
    x0 = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(0)).round() * 2 - 1
    eps_oracle = exact_noise(x0)
    target = MaskDiffusionPrepareBatch(1000, scheduler=scheduler).get_target

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return target(x0, eps_oracle(x_t, t), t)  # what the trained network would output

    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    sampler = make_sampler(name, steps, scheduler)
    out = sampler.sample(denoise, noise, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, x0, atol=1e-3, rtol=0)


def test_unknown_prediction_type_is_refused():
    scheduler = DDPMScheduler()
    scheduler.prediction_type = "logits"
    with pytest.raises(ValueError, match="prediction_type"):
        make_sampler("ddim", 10, scheduler)


LEARNED = DDPMScheduler(variance_type="learned_range")


def with_variance(denoise, v: float):
    """A network that also outputs a constant variance interpolation v (learned_range)."""

    def both(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([denoise(x_t, t), torch.full_like(x_t, v)], dim=1)

    return both


def test_learned_variance_ends_are_the_fixed_variances() -> None:
    """v = -1 is the posterior variance beta_tilde (the fixed-small sampler, draw for draw);
    v = +1 is beta_t, with which ancestral sampling of Gaussian data is still exact."""
    mu, sd = 0.2, 0.2
    x_T = _noise(1, 1, 64, 64)
    fixed = DDPMSampler(SCHEDULER).sample(
        gaussian_eps(mu, sd), x_T, generator=torch.Generator().manual_seed(3)
    )
    low = DDPMSampler(LEARNED).sample(
        with_variance(gaussian_eps(mu, sd), -1.0), x_T, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(low, fixed, atol=1e-5, rtol=0)
    high = DDPMSampler(LEARNED).sample(
        with_variance(gaussian_eps(mu, sd), 1.0),
        _noise(1, 1, 96, 96),
        generator=torch.Generator().manual_seed(3),
    )
    assert not torch.allclose(high[..., :64, :64], fixed)
    a_0 = ABAR[0].item()
    expected_sd = math.sqrt(a_0) * sd**2 / math.sqrt(a_0 * sd**2 + 1 - a_0)
    assert abs(high.mean().item() - mu) < 0.01
    assert abs(high.std().item() / expected_sd - 1) < 0.03
    # the deterministic samplers read the prediction and ignore the variance channels
    ddim = DDIMSampler(LEARNED, 10).sample(with_variance(gaussian_eps(mu, sd), 0.3), x_T)
    torch.testing.assert_close(ddim, DDIMSampler(SCHEDULER, 10).sample(gaussian_eps(mu, sd), x_T))


def test_a_new_sampler_is_one_class(monkeypatch) -> None:
    """A name, timesteps and an update step are all a sampler defines: the loop, the network
    call, the x0 it implies and make_sampler's lookup are shared (docs/architecture.md)."""
    monkeypatch.setattr(samplers, "SAMPLERS", dict(samplers.SAMPLERS))  # registered for this test

    class FirstOrderSampler(Sampler):
        """The deterministic first-order step to the next timestep: DDIM with eta 0."""

        name = "first_order"

        def __init__(self, scheduler: DDPMScheduler, num_steps: int) -> None:
            super().__init__(scheduler, spaced_timesteps(len(scheduler.alphas_cumprod), num_steps))

        def step(self, x, t_next, history, generator):
            now = history[-1]
            abar, abar_next = self.alphas_cumprod[now.t], self.alphas_cumprod[t_next]
            eps = (x - math.sqrt(abar) * now.x0) / math.sqrt(1.0 - abar)
            return math.sqrt(abar_next) * now.x0 + math.sqrt(1.0 - abar_next) * eps

    sampler = make_sampler("first_order", 10)
    assert isinstance(sampler, FirstOrderSampler) and sampler.num_steps == 10
    denoise, x_T = gaussian_eps(0.1, 0.3), _noise(1, 1, 16, 16)
    expected = DDIMSampler(SCHEDULER, 10).sample(denoise, x_T)
    torch.testing.assert_close(sampler.sample(denoise, x_T), expected, atol=1e-6, rtol=0)
