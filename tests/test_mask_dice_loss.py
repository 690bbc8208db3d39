"""The Dice loss on the implied mask (``mask_dice_weight``): zero for a perfect prediction of
any prediction type, the weighted MSE plus the weight times MONAI's Dice loss otherwise, and
training takes it from the command line or says why not."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceLoss
from monai.networks.schedulers import DDPMScheduler

from bundle.diffusion.process import PREDICTION_TYPES, predicted_x0
from bundle.diffusion.training import MaskDiceTarget, MaskDiffusionPrepareBatch, diffusion_loss
from tests.bundle_cli import assert_ok, assert_one_line_error, bundle_run, train_overrides


def prepared(kind: str, weight: float) -> tuple[torch.Tensor, MaskDiceTarget, dict]:
    mask = (torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    prepare = MaskDiffusionPrepareBatch(
        1000, scheduler=DDPMScheduler(prediction_type=kind), mask_dice_weight=weight
    )
    prepare.get_timesteps = lambda x0: torch.tensor([0, 200, 600, 990])
    x0, target, _, kwargs = prepare({"label": mask, "image": torch.zeros(4, 4, 8, 8)})
    return x0, target, kwargs


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
def test_a_perfect_prediction_costs_nothing(kind):
    _, target, _ = prepared(kind, 1.0)
    assert isinstance(target, MaskDiceTarget)
    loss = diffusion_loss(DDPMScheduler(prediction_type=kind), "uniform", 1.0)
    assert loss(target.weighted.target, target).item() == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
def test_the_loss_is_the_mse_plus_the_weighted_dice_of_the_implied_mask(kind):
    net = DDPMScheduler(prediction_type=kind)
    x0, target, kwargs = prepared(kind, 0.5)
    output = target.weighted.target + 0.3 * torch.randn_like(x0)
    loss = diffusion_loss(net, "uniform", 0.5)(output, target)
    x_t = net.add_noise(x0, kwargs["noise"], kwargs["timesteps"])
    mask = ((predicted_x0(net, output, x_t, kwargs["timesteps"]) + 1) / 2).clamp(0, 1)
    dice = DiceLoss(batch=True)(mask, (x0 + 1) / 2)
    mse = (output - target.weighted.target).pow(2).mean()
    torch.testing.assert_close(loss, mse + 0.5 * dice)


def test_no_weight_keeps_the_plain_mse():
    _, target, _ = prepared("sample", 0.0)
    assert isinstance(target, torch.Tensor)


def test_the_learned_variance_has_no_dice_term():
    with pytest.raises(ValueError, match="mask_dice_weight needs learn_sigma false"):
        diffusion_loss(DDPMScheduler(variance_type="learned_range"), "uniform", 1.0)


def test_training_with_the_dice_loss(small_datasets, tmp_path):
    ckpt = tmp_path / "ckpt"
    overrides = train_overrides(
        small_datasets["brats2020"], ckpt, epochs=2, val_interval=100, mask_dice_weight=1.0
    )
    assert_ok(bundle_run("training", ["train.yaml"], overrides))
    state = torch.load(ckpt / "last.pt", weights_only=False)
    assert all(torch.isfinite(value).all() for value in state["model"].values())


def test_training_refuses_a_negative_weight(small_datasets, tmp_path):
    overrides = train_overrides(
        small_datasets["brats2020"], tmp_path / "ckpt", epochs=1, mask_dice_weight=-1
    )
    assert_one_line_error(bundle_run("training", ["train.yaml"], overrides), "--mask_dice_weight")
    assert not (tmp_path / "ckpt" / "last.pt").exists()
