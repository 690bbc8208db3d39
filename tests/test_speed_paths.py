"""The inferer's speed-ups through its public entry: bfloat16 on the CPU, slice skipping, CUDA,
and loading both checkpoint formats."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from bundle.diffusion.samplers import make_sampler
from bundle.ensemble.inferers import ImplicitEnsembleInferer
from bundle.ensemble.precision import NetworkRunner, cpu_computes_bf16, precision_mode
from bundle.io.checkpoints import load_weights
from scripts.benchmark import load_config
from tests.test_inferer import Recorder, images, tiny_unet

STEPS = 3


class SoftMask(nn.Module):
    """Predicts x0 = tanh(3 * image channel 0 + x_t): slices whose channel 0 is very negative
    give x0 = -1 (no tumour) whatever the noise; elsewhere the samples differ."""

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return torch.tanh(3 * x[:, 1:2] + x[:, :1])


def x0_sampler(name: str = "ddim", steps: int = STEPS, eta: float = 0.0):
    """A sampler for a network that predicts x0, as the shipped one does."""
    return make_sampler(name, steps, DDPMScheduler(prediction_type="sample"), eta=eta)


def volume_with_empty_slices() -> torch.Tensor:
    """(1, 4, 16, 16, 5): slices 1 and 3 have no tumour (channel 0 = -10) but have brain."""
    image = images(1, 4, 16, 16, 5)
    image[:, 0, ..., [1, 3]] = -10.0
    return image


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_skipping_changes_only_the_slices_without_tumour(eta: float) -> None:
    image, sampler = volume_with_empty_slices(), x0_sampler(eta=eta)
    full_net, skip_net = Recorder(SoftMask()), Recorder(SoftMask())
    common = {"sampler": sampler, "num_samples": 3, "return_samples": True, "amp": False}
    full = ImplicitEnsembleInferer(**common)(image, full_net)
    skipped = ImplicitEnsembleInferer(**common, skip_threshold=0.01)(image, skip_net)
    tumour = [0, 2, 4]
    # the kept slices' noise and every step's noise are drawn for the whole state: identical
    torch.testing.assert_close(skipped[..., tumour], full[..., tumour], atol=0, rtol=0)
    assert full[:, 0, ..., tumour].max() > 0.5 and full[:, 1, ..., tumour].max() > 0
    # skipped slices: mean, variance and samples 0, where the full run was below the threshold
    assert skipped[..., [1, 3]].abs().max() == 0
    assert full[..., [1, 3]].abs().max() < 0.01
    # the probe, the first step on every slice, then only the 3 tumour slices x 3 samples
    assert sum(full_net.batch_sizes) == 1 + STEPS * 15
    assert sum(skip_net.batch_sizes) == 1 + 15 + (STEPS - 1) * 9


def test_skipping_everything_and_a_noise_predicting_network() -> None:
    image = images(1, 4, 16, 16, 3)
    image[:, 0] = -10.0
    recorder = Recorder(SoftMask())
    out = ImplicitEnsembleInferer(x0_sampler("ddpm", 1000), 2, amp=False, skip_threshold=0.01)(
        image, recorder
    )
    assert out.abs().max() == 0 and sum(recorder.batch_sizes) == 1 + 2 * 3  # one step only
    # epsilon prediction: the first x0 estimate is noise / sqrt(alpha_bar), clipped to +-1,
    # so no slice is skipped
    recorder = Recorder(tiny_unet())
    ImplicitEnsembleInferer(make_sampler("ddim", STEPS), 2, amp=False, skip_threshold=0.5)(
        image, recorder
    )
    assert sum(recorder.batch_sizes) == 1 + STEPS * 2 * 3


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
    assert NetworkRunner(SoftMask, torch.device("cpu"), amp=True).mode in ("fp32", "bf16")


@pytest.mark.skipif(not cpu_computes_bf16(), reason="needs a CPU with AMX or AVX512-BF16")
def test_cpu_bf16_gives_the_float32_masks_on_the_demo_case() -> None:
    """The shipped weights on 8 tumour slices of the real demo case: bfloat16 and float32
    masks agree (Dice >= 0.99) and so do the mean and variance (within 0.05)."""
    infer = load_config("inference.yaml")
    network = load_weights(infer.get_parsed_content("network_def"), "models/model.pt")
    case = {"image": [f"demo/Brats18_TCIA03_265_1/Brats18_TCIA03_265_1_{m}.nii.gz"
                      for m in ("t1", "t1ce", "t2", "flair")]}  # fmt: skip
    volume = infer.get_parsed_content("preprocessing")(case)["image"]
    slices = volume[..., 60:100:5].movedim(-1, 0).as_tensor()
    sampler = make_sampler("ddim", 5, infer.get_parsed_content("noise_scheduler"))
    out = {
        amp: ImplicitEnsembleInferer(sampler, num_samples=5, amp=amp)(slices, network)
        for amp in (False, True)
    }
    float32, bf16 = out[False], out[True]
    masks = float32[:, 0] > 0.5, bf16[:, 0] > 0.5
    assert masks[0].sum() > 100  # tumour on these slices
    dice = 2 * (masks[0] & masks[1]).sum() / (masks[0].sum() + masks[1].sum())
    assert dice >= 0.99
    torch.testing.assert_close(bf16, float32, atol=0.05, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_autocast_with_skipping() -> None:
    image = volume_with_empty_slices().cuda()
    common = {"sampler": x0_sampler(), "num_samples": 3, "amp": True}
    full = ImplicitEnsembleInferer(**common)(image, tiny_unet().cuda())
    skipped = ImplicitEnsembleInferer(**common, skip_threshold=0.01)(image, SoftMask().cuda())
    assert full.device == image.device and full.dtype == torch.float32
    assert skipped[..., [1, 3]].abs().max() == 0 and skipped[:, 0, ..., 0].max() > 0.5


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
