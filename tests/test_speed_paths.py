"""The inferer's precision through its public entry (bfloat16 on the CPU, autocast on CUDA),
and loading both checkpoint formats."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from bundle.diffusion.samplers import Sampler, make_sampler
from bundle.ensemble.inferers import ImplicitEnsembleInferer
from bundle.ensemble.precision import NetworkRunner, cpu_computes_bf16, precision_mode
from bundle.evaluation.network_speed import measure
from bundle.io.checkpoints import load_weights
from bundle.workflow.configs import load_config
from tests.test_inferer import images, tiny_unet

STEPS = 3


def x0_sampler() -> Sampler:
    """A sampler for a network that predicts x0, as the shipped one does."""
    return make_sampler("ddim", STEPS, DDPMScheduler(prediction_type="sample"))


def test_precision_is_chosen_by_device() -> None:
    assert precision_mode(torch.device("cpu"), amp=False) == "fp32"
    assert precision_mode(torch.device("cuda"), amp=True) == "autocast"
    expected = "bf16" if cpu_computes_bf16() else "fp32"
    assert precision_mode(torch.device("cpu"), amp=True) == expected
    network = tiny_unet()
    runner = NetworkRunner(network, torch.device("cpu"), amp=True)
    assert next(network.parameters()).dtype == torch.float32  # the caller's network is kept
    x, t = images(2, 5, 16, 16), torch.tensor([0, 999])
    assert runner(x, t).dtype == torch.float32
    assert NetworkRunner(lambda x, timesteps: x, torch.device("cpu"), amp=True).mode == "fp32"


@pytest.mark.skipif(not cpu_computes_bf16(), reason="needs a CPU with AMX or AVX512-BF16")
def test_cpu_bf16_gives_the_float32_masks_on_the_demo_case() -> None:
    """The shipped weights on 5 tumour slices of the real demo case: bfloat16 and float32
    masks agree (Dice >= 0.99) and so do the mean and variance (within 0.05); a vote flips
    only where a sample is at 0.5, in at most 0.1% of the voxels."""
    infer = load_config("inference.yaml")
    network = load_weights(infer.get_parsed_content("network_def"), "models/model.pt")
    case = {"image": [f"demo/Brats18_TCIA03_265_1/Brats18_TCIA03_265_1_{m}.nii.gz"
                      for m in ("t1", "t1ce", "t2", "flair")]}  # fmt: skip
    volume = infer.get_parsed_content("preprocessing")(case)["image"]
    slices = volume[..., 60:100:8].movedim(-1, 0).as_tensor()
    sampler = make_sampler("ddim", 5, infer.get_parsed_content("noise_scheduler"))
    out = {
        amp: ImplicitEnsembleInferer(sampler, num_samples=4, amp=amp)(slices, network)
        for amp in (False, True)
    }
    float32, bf16 = out[False], out[True]
    masks = float32[:, 0] > 0.5, bf16[:, 0] > 0.5
    assert masks[0].sum() > 100  # tumour on these slices
    dice = 2 * (masks[0] & masks[1]).sum() / (masks[0].sum() + masks[1].sum())
    assert dice >= 0.99
    torch.testing.assert_close(bf16[:, :2], float32[:, :2], atol=0.05, rtol=0)
    assert (bf16[:, 2] != float32[:, 2]).float().mean() <= 0.001


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_autocast_gives_the_float32_masks() -> None:
    image, network = images(1, 4, 16, 16, 3).cuda(), tiny_unet().cuda()
    out = {
        amp: ImplicitEnsembleInferer(x0_sampler(), num_samples=3, amp=amp)(image, network)
        for amp in (False, True)
    }
    assert out[True].device == image.device and out[True].dtype == torch.float32
    torch.testing.assert_close(out[True][:, :2], out[False][:, :2], atol=0.05, rtol=0)


@pytest.mark.parametrize("wrapped", [False, True])
def test_load_weights_reads_both_checkpoint_formats(tmp_path, wrapped: bool) -> None:
    state = tiny_unet().state_dict()
    path = tmp_path / "model.pt"
    torch.save({"model": state, "settings": {}} if wrapped else state, path)
    network = tiny_unet()
    torch.nn.init.zeros_(network.conv_in.conv.weight)
    load_weights(network.train(), path)
    assert not network.training
    torch.testing.assert_close(network.conv_in.conv.weight, state["conv_in.conv.weight"])


def test_network_options_time_every_option_against_float32() -> None:
    rows = measure(tiny_unet(), 16, 16, batch_size=2, batch_sizes=(4,), repeats=1)
    names = [row["option"] for row in rows]
    assert names[0] == "float32" and rows[0]["max_abs_difference"] == 0
    assert any(name.startswith("default (") for name in names) and "default, batch 4" in names
    assert all(row["ms_per_image"] > 0 for row in rows)
    assert all(row["max_abs_difference"] < 0.1 for row in rows if row["batch"] == 2)
