"""Loss weighting over timesteps: a weighting named after a prediction type is that type's loss
(on an x0 network, v-prediction's is Salimans & Ho's SNR + 1), and training takes the setting
from the command line or says why not."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from bundle.diffusion.process import PREDICTION_TYPES, predicted_x0, prediction_target
from bundle.diffusion.training import MaskDiffusionPrepareBatch, diffusion_loss
from tests.bundle_cli import assert_ok, assert_one_line_error, bundle_run, train_overrides


def scheduler(prediction_type: str) -> DDPMScheduler:
    return DDPMScheduler(prediction_type=prediction_type)


def prepared(weighting: str, kind: str = "sample") -> tuple[torch.Tensor, object, dict]:
    generator = torch.Generator().manual_seed(0)
    mask = (torch.rand(5, 1, 8, 8, generator=generator) > 0.5).float()
    prepare = MaskDiffusionPrepareBatch(1000, scheduler=scheduler(kind), loss_weighting=weighting)
    prepare.get_timesteps = lambda x0: torch.tensor([0, 10, 300, 700, 990])
    x0, target, _, kwargs = prepare({"label": mask, "image": torch.zeros(5, 4, 8, 8)})
    return x0, target, kwargs


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
@pytest.mark.parametrize("weighting", PREDICTION_TYPES)
def test_a_weighting_is_that_prediction_types_loss(kind, weighting):
    """The weighted MSE of a ``kind`` network's output equals the MSE of the ``weighting``
    quantity that the output implies (x_t fixed)."""
    x0, target, kwargs = prepared(weighting, kind)
    output = target.target + 0.3 * torch.randn_like(x0)
    loss = diffusion_loss(scheduler(kind), weighting)(output, target)
    t, noise = kwargs["timesteps"], kwargs["noise"]
    net, other = scheduler(kind), scheduler(weighting)
    x_t = net.add_noise(x0, noise, t)
    x0_hat = predicted_x0(net, output, x_t, t)
    abar = net.alphas_cumprod[t].view(-1, 1, 1, 1)
    noise_hat = (x_t - abar.sqrt() * x0_hat) / (1 - abar).sqrt()
    implied = prediction_target(other, x0_hat, noise_hat, t)
    expected = (implied - prediction_target(other, x0, noise, t)).pow(2).mean()
    torch.testing.assert_close(loss, expected, rtol=2e-3, atol=0)
    if kind == "sample" and weighting == "v_prediction":  # Salimans & Ho's SNR + 1
        torch.testing.assert_close(target.weight, (1 / (1 - abar.flatten())).float())


def test_uniform_is_the_plain_mse():
    x0, target, _ = prepared("uniform")
    assert isinstance(target, torch.Tensor)
    loss = diffusion_loss(scheduler("sample"))(x0 + 0.5, target)
    assert math.isclose(loss.item(), 0.25, rel_tol=1e-6)


def test_training_refuses_an_unknown_weighting(small_datasets, tmp_path):
    overrides = train_overrides(
        small_datasets["brats2020"], tmp_path / "ckpt", epochs=1, loss_weighting="min_snr"
    )
    result = bundle_run("training", ["train.yaml"], overrides)
    assert_one_line_error(result, "--loss_weighting must be one of uniform, epsilon, sample")
    assert not (tmp_path / "ckpt" / "last.pt").exists()


def test_training_with_v_predictions_loss(small_datasets, tmp_path):
    ckpt = tmp_path / "ckpt"
    overrides = train_overrides(
        small_datasets["brats2020"], ckpt, epochs=2, val_interval=100, loss_weighting="v_prediction"
    )
    assert_ok(bundle_run("training", ["train.yaml"], overrides))
    state = torch.load(ckpt / "last.pt", weights_only=False)
    assert all(torch.isfinite(value).all() for value in state["model"].values())


def test_the_hybrid_loss_weights_its_mse_term_only():
    learnt = DDPMScheduler(variance_type="learned_range")
    prepare = MaskDiffusionPrepareBatch(1000, scheduler=learnt)
    mask = (torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    _, target, _, _ = prepare({"label": mask, "image": torch.zeros(4, 4, 8, 8)})
    output = torch.cat([target.target + 0.2, torch.zeros_like(target.target)], dim=1)
    uniform = diffusion_loss(learnt)(output, target)
    weighted = diffusion_loss(learnt, "sample")(output, target)  # an epsilon network's x0 loss
    abar = learnt.alphas_cumprod[target.timesteps]
    torch.testing.assert_close(weighted - uniform, ((1 - abar) / abar - 1) * 0.04)
