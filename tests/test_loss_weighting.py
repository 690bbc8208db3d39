"""Loss weighting over timesteps: ``snr_plus_one`` on an x0 target is v-prediction's loss, and
training takes the setting from the command line or says why not."""

from __future__ import annotations

import math

import torch
from monai.networks.schedulers import DDPMScheduler

from bundle.diffusion.training import MaskDiffusionPrepareBatch, diffusion_loss
from tests.bundle_cli import assert_ok, assert_one_line_error, bundle_run, train_overrides


def scheduler(prediction_type: str) -> DDPMScheduler:
    return DDPMScheduler(prediction_type=prediction_type)


def prepared(weighting: str) -> tuple[torch.Tensor, object, dict]:
    generator = torch.Generator().manual_seed(0)
    mask = (torch.rand(6, 1, 8, 8, generator=generator) > 0.5).float()
    prepare = MaskDiffusionPrepareBatch(
        1000, scheduler=scheduler("sample"), loss_weighting=weighting
    )
    x0, target, _, kwargs = prepare({"label": mask, "image": torch.zeros(6, 4, 8, 8)})
    return x0, target, kwargs


def test_snr_plus_one_on_x0_is_the_v_prediction_loss():
    x0, target, kwargs = prepared("snr_plus_one")
    x0_hat = x0 + 0.3 * torch.randn_like(x0)  # what an x0 network might predict
    loss = diffusion_loss(scheduler("sample"), "snr_plus_one")(x0_hat, target)
    # the same prediction written as v, scored against the v target
    v_net = scheduler("v_prediction")
    t = kwargs["timesteps"]
    abar = v_net.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = v_net.add_noise(x0, kwargs["noise"], t)
    v_hat = (abar.sqrt() * x_t - x0_hat) / (1 - abar).sqrt()
    v_loss = (v_hat - v_net.get_velocity(x0, kwargs["noise"], t)).pow(2).mean()
    torch.testing.assert_close(loss, v_loss)
    assert target.weight.min() >= 1.0 and target.weight.max() > 1.0


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
    assert_one_line_error(result, "--loss_weighting must be one of uniform, snr_plus_one")
    assert not (tmp_path / "ckpt" / "last.pt").exists()


def test_training_with_snr_plus_one(small_datasets, tmp_path):
    ckpt = tmp_path / "ckpt"
    overrides = train_overrides(
        small_datasets["brats2020"], ckpt, epochs=2, val_interval=100, loss_weighting="snr_plus_one"
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
    weighted = diffusion_loss(learnt, "snr_plus_one")(output, target)
    abar = learnt.alphas_cumprod[target.timesteps]
    torch.testing.assert_close(weighted - uniform, (1 / (1 - abar) - 1) * 0.04)
