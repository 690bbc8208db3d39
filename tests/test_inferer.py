"""ImplicitEnsembleInferer with a tiny real DiffusionModelUNet and with an exact-noise oracle."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from bundle.diffusion.samplers import make_sampler
from bundle.ensemble.inferers import (
    MEMBER_SEED_STRIDE,
    ImplicitEnsembleInferer,
    box_calls,
    brain_box,
)
from bundle.ensemble.networks import NetworkEnsemble

NUM_STEPS = 3


def tiny_unet() -> DiffusionModelUNet:
    torch.manual_seed(0)
    return DiffusionModelUNet(
        spatial_dims=2,
        in_channels=5,
        out_channels=1,
        channels=(8, 8),
        attention_levels=(False, False),
        num_res_blocks=1,
        norm_num_groups=8,
        include_fc=False,
    )


class Recorder(nn.Module):
    """Wraps a network and records what it is called with."""

    def __init__(self, network: nn.Module, mask_channels: int = 1) -> None:
        super().__init__()
        self.network, self.mask_channels = network, mask_channels
        self.images: list[torch.Tensor] = []
        self.batch_sizes: list[int] = []
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        self.images.append(x[:, self.mask_channels :].clone())
        self.batch_sizes.append(x.shape[0])
        self.modes.append(self.network.training)
        return self.network(x=x, timesteps=timesteps)


class ExactNoise(nn.Module):
    """Predicts the exact noise for the mask ``image[:, :C] > 0``; has no ``out_channels``."""

    def __init__(self, mask_channels: int) -> None:
        super().__init__()
        self.mask_channels = mask_channels
        self.register_buffer("abar", DDPMScheduler().alphas_cumprod)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        x_t, image = x[:, : self.mask_channels], x[:, self.mask_channels :]
        x0 = (image[:, : self.mask_channels] > 0).float() * 2 - 1
        a = self.abar[timesteps].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


def make_inferer(**kwargs) -> ImplicitEnsembleInferer:
    """float32 unless a test asks for ``amp``: the bfloat16 CPU path runs a copy of the network
    (which a Recorder cannot see) and rounds to 3 digits (tests/test_precision.py)."""
    kwargs = {"sampler": make_sampler("ddim", NUM_STEPS), "num_samples": 3, "amp": False, **kwargs}
    return ImplicitEnsembleInferer(**kwargs)


def images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((2, 4, 16, 16), (2, 3, 16, 16)), ((1, 4, 16, 16, 3), (1, 3, 16, 16, 3))],
)
def test_shapes_and_ranges(shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    out = make_inferer()(images(*shape), tiny_unet())
    assert out.shape == expected
    mean, var, votes = out[:, :1], out[:, 1:2], out[:, 2:]
    assert mean.min() >= 0 and mean.max() <= 1
    assert var.min() >= 0 and var.max() <= 0.25
    assert var.max() > 0
    # votes are fractions of the 3 samples: 0, 1/3, 2/3 or 1
    torch.testing.assert_close(votes * 3, (votes * 3).round())
    assert votes.max() > 0


def test_return_samples_and_single_sample() -> None:
    image = images(1, 4, 16, 16, 2)
    out = make_inferer(return_samples=True, progress=True)(image, tiny_unet())
    assert out.shape == (1, 3 + 3, 16, 16, 2)
    samples = out[:, 3:]
    torch.testing.assert_close(out[:, :1], samples.mean(1, keepdim=True))
    torch.testing.assert_close(out[:, 1:2], samples.var(1, keepdim=True, unbiased=False))
    torch.testing.assert_close(out[:, 2:3], (samples > 0.5).float().mean(1, keepdim=True))

    single = make_inferer(num_samples=1, return_samples=True)(image, tiny_unet())
    assert single.shape == (1, 4, 16, 16, 2)
    assert torch.equal(single[:, 1], torch.zeros_like(single[:, 1]))
    assert torch.equal(single[:, 0], single[:, 3])
    assert torch.equal(single[:, 2], (single[:, 3] > 0.5).float())


def test_network_ensemble_draws_sample_i_with_member_i_mod_k() -> None:
    image, single = images(1, 4, 16, 16, 2), tiny_unet()
    alone = make_inferer(return_samples=True, num_samples=3)(image, single)
    assert torch.equal(make_inferer(return_samples=True)(image, NetworkEnsemble(single, 1)), alone)

    members = NetworkEnsemble(single, 2)
    with torch.no_grad():
        for parameter in members[1].parameters():
            parameter.mul_(-1.5)
    recorders = [Recorder(member) for member in members]
    members = NetworkEnsemble(single, 2)
    members[0], members[1] = recorders
    samples = make_inferer(return_samples=True, num_samples=3)(image, members)[:, 3:]
    # samples 0 and 2 from member 0 (2 samples, seed 0), sample 1 from member 1 (seed + 1000)
    first = make_inferer(return_samples=True, num_samples=2)(image, recorders[0].network)[:, 3:]
    second = make_inferer(return_samples=True, num_samples=1, seed=MEMBER_SEED_STRIDE)(
        image, recorders[1].network
    )[:, 3:]
    torch.testing.assert_close(samples[:, [0, 2]], first)
    torch.testing.assert_close(samples[:, [1]], second)
    assert not torch.allclose(samples[:, [1]], alone[:, [4]])
    # each member ran its own samples only: one probe, then steps x its samples x 2 slices
    assert [sum(r.batch_sizes) for r in recorders] == [1 + NUM_STEPS * 2 * 2, 1 + NUM_STEPS * 2]


def test_empty_slices_are_skipped() -> None:
    image = images(1, 4, 16, 16, 4)
    image[..., 0] = 0
    image[..., 3] = 0.05  # below brain_threshold
    recorder = Recorder(tiny_unet())
    out = make_inferer(brain_threshold=0.1)(image, recorder)
    for skipped in (0, 3):
        assert torch.equal(out[..., skipped], torch.zeros_like(out[..., skipped]))
    assert all((batch.abs() > 0.1).flatten(1).any(1).all() for batch in recorder.images)
    # one probe image for the memory estimate, then steps x samples x kept slices
    assert sum(recorder.batch_sizes) == 1 + NUM_STEPS * 3 * 2

    recorder = Recorder(tiny_unet())
    out = make_inferer()(torch.zeros(2, 4, 16, 16), recorder)
    assert recorder.batch_sizes == [] and torch.equal(out, torch.zeros(2, 3, 16, 16))


def test_seed_determines_output() -> None:
    image, network = images(2, 4, 16, 16), tiny_unet()
    first = make_inferer(seed=7)(image, network)
    assert torch.equal(first, make_inferer(seed=7)(image, network))
    assert not torch.allclose(first, make_inferer(seed=8)(image, network))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_memory_budget_only_changes_chunking(eta: float) -> None:
    image, sampler = images(1, 4, 16, 16, 3), make_sampler("ddim", NUM_STEPS, eta=eta)
    small, large = Recorder(tiny_unet()), Recorder(tiny_unet())
    out_small = make_inferer(sampler=sampler, memory_budget_mb=1e-6)(image, small)
    out_large = make_inferer(sampler=sampler, memory_budget_mb=4096, cpu_batch_size=64)(
        image, large
    )
    assert set(small.batch_sizes) == {1}
    assert large.batch_sizes == [1] + [3 * 3] * NUM_STEPS
    torch.testing.assert_close(out_small, out_large, atol=1e-5, rtol=0)
    capped = Recorder(tiny_unet())
    out_capped = make_inferer(sampler=sampler, memory_budget_mb=4096, cpu_batch_size=4)(
        image, capped
    )
    assert capped.batch_sizes == [1] + [4, 4, 1] * NUM_STEPS  # 9 images, at most 4 a call
    torch.testing.assert_close(out_capped, out_large, atol=1e-5, rtol=0)


def test_eval_mode_during_call_and_restored() -> None:
    recorder = Recorder(tiny_unet()).train()
    make_inferer()(images(1, 4, 16, 16), recorder)
    assert recorder.modes and not any(recorder.modes)
    assert recorder.training and recorder.network.training


def test_metatensor_meta_is_kept() -> None:
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0], dtype=torch.float64))
    image = MetaTensor(images(4, 16, 16, 2), affine=affine, meta={"filename_or_obj": "case.nii"})
    image.push_applied_operation({"class": "Orientation", "id": 1})
    image = MetaTensor(image[None]).copy_meta_from(image)
    out = make_inferer()(image, tiny_unet())
    assert isinstance(out, MetaTensor)
    assert out.meta["filename_or_obj"] == "case.nii"
    torch.testing.assert_close(out.affine, affine)
    assert out.applied_operations == image.applied_operations
    out[0] += 1  # post-processing may work in place (no inference-mode tensor escapes)


@pytest.mark.parametrize("mask_channels", [1, 2])
def test_exact_noise_network_gives_the_mask(mask_channels: int) -> None:
    """Chunks that straddle slices and samples (budget for 4 network inputs) must still pair
    every sample with its own slice's image; the mask channels come from ``mask_channels``."""
    image = images(2, 4, 12, 12, 3)
    mask = (image[:, :mask_channels] > 0).float()
    input_bytes = (mask_channels + 4) * 12 * 12 * 4
    inferer = make_inferer(mask_channels=mask_channels, memory_budget_mb=4.5 * input_bytes / 2**20)
    recorder = Recorder(ExactNoise(mask_channels), mask_channels)
    out = inferer(image, recorder)
    assert recorder.batch_sizes == [1] + [4, 4, 4, 4, 2] * NUM_STEPS  # 3 samples x 6 slices
    assert out.shape == (2, 3 * mask_channels, 12, 12, 3)
    torch.testing.assert_close(out[:, :mask_channels], mask, atol=1e-4, rtol=0)
    assert out[:, mask_channels : 2 * mask_channels].abs().max() < 1e-6
    torch.testing.assert_close(out[:, 2 * mask_channels :], mask)  # every sample votes the mask


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="got"):
        make_inferer()(torch.zeros(4, 16, 16), tiny_unet())
    with pytest.raises(ValueError, match="num_samples"):
        make_inferer(num_samples=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_with_amp() -> None:
    image = images(1, 4, 16, 16, 2).cuda()
    network = tiny_unet().cuda()
    out = make_inferer(amp=True)(image, network)
    assert out.device == image.device and out.dtype == torch.float32
    assert torch.equal(out, make_inferer(amp=True)(image, network))
    mask = (image[:, :1] > 0).float()
    exact = make_inferer(memory_budget_mb=1e-3)(image, ExactNoise(1).cuda())
    torch.testing.assert_close(exact[:, :1], mask, atol=1e-4, rtol=0)


def test_brain_box_is_a_covering_multiple() -> None:
    brain = torch.zeros(3, 1, 32, 40, dtype=torch.bool)
    brain[0, 0, 5:9, 10:13] = True
    brain[2, 0, 20:21, 30:33] = True
    rows, cols = brain_box(brain, 8)
    assert (rows.start, rows.stop) == (5, 21) and (cols.start, cols.stop) == (10, 34)
    assert brain_box(torch.ones(1, 1, 32, 40, dtype=torch.bool), 8) == (slice(0, 32), slice(0, 40))
    near_edge = torch.zeros(1, 1, 32, 40, dtype=torch.bool)
    near_edge[0, 0, 30:32, 0:3] = True
    rows, cols = brain_box(near_edge, 8)
    assert (rows.start, rows.stop) == (24, 32) and (cols.start, cols.stop) == (0, 8)


def test_only_the_brain_box_is_sampled() -> None:
    image = torch.zeros(1, 4, 32, 32, 3)
    image[:, :, 8:14, 10:20, :] = images(1, 4, 6, 10, 3) + 2.0  # a small "brain"
    recorder = Recorder(tiny_unet())
    out = make_inferer(spatial_multiple=4)(image, recorder)
    assert {tuple(x.shape[-2:]) for x in recorder.images} == {(8, 12)}
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[8:14, 10:20] = False
    assert out[..., outside, :].abs().max() == 0
    assert out[:, 0][..., ~outside, :].abs().max() > 0


def two_brains() -> torch.Tensor:
    """A volume of 3 axial slices: a small brain, none, a larger one."""
    image = torch.zeros(1, 4, 32, 32, 3)
    image[..., 10:14, 12:15, 0] = images(4, 4, 3) + 2.0
    image[..., 4:20, 6:26, 2] = images(4, 16, 20, seed=1) + 2.0
    return image


def test_each_slice_is_sampled_in_its_own_box() -> None:
    """Every network call holds slices of one box size, each slice's own brain box (grown to
    ``slice_box_multiple``); the result does not depend on how the rows are chunked; 0 gives
    one box over all slices."""
    image, network = two_brains(), tiny_unet()
    own = Recorder(network)
    out = make_inferer(spatial_multiple=4, slice_box_multiple=4, cpu_batch_size=2)(image, own)
    assert {tuple(x.shape[-2:]) for x in own.images[1:]} == {(4, 4), (16, 20)}
    assert sorted(own.batch_sizes[1:5]) == [1, 1, 2, 2]  # 3 rows of each size, 2 a call
    brain = (image.abs() > 0).any(1)
    assert out[:, :, ~brain[0]].abs().max() == 0
    assert out[:, 0][brain].abs().max() > 0
    together = make_inferer(spatial_multiple=4, slice_box_multiple=4, cpu_batch_size=64)
    torch.testing.assert_close(together(image, network), out, atol=1e-5, rtol=0)
    one_box = Recorder(network)
    make_inferer(spatial_multiple=4, slice_box_multiple=0)(image, one_box)
    assert {tuple(x.shape[-2:]) for x in one_box.images} == {(16, 20)}


def test_box_calls_cover_every_row_once() -> None:
    brain = (two_brains()[0].abs() > 0).any(0, keepdim=True).movedim(-1, 0)[[0, 2]]
    calls = box_calls(brain, num_samples=3, chunk=2, multiple=8)
    rows = torch.cat([call.rows for call in calls])
    assert sorted(rows.tolist()) == list(range(6))
    for call in calls:  # each box covers its slice's brain and is a multiple of 8 (or the image)
        box = torch.zeros_like(brain[call.rows % 2])
        box[torch.arange(len(call.rows))[:, None, None], 0, call.ys, call.xs] = True
        assert (box >= brain[call.rows % 2]).all()
        assert call.ys.shape[1] % 8 == 0 and call.xs.shape[2] % 8 == 0
    whole = box_calls(torch.ones_like(brain), num_samples=3, chunk=4, multiple=8)
    assert [call.rows.tolist() for call in whole] == [[0, 1, 2, 3], [4, 5]]
    assert {(call.ys.shape[1], call.xs.shape[2]) for call in whole} == {(32, 32)}


def test_cpu_workers_give_the_same_ensemble_and_share_the_memory_budget() -> None:
    """Network calls on two CPU threads (one intra-op thread each) give what one call at a time
    gives, restore PyTorch's thread setting, and each get half the budget's images."""
    image, network = images(1, 4, 16, 16, 4), tiny_unet()
    threads = torch.get_num_threads()
    probe = make_inferer()
    probe(image[..., :1], network)
    budget = 8.5 * probe.batching["activation_mb_per_image"]  # 8 images a call
    one, two = (make_inferer(cpu_workers=w, memory_budget_mb=budget) for w in (1, 2))
    torch.testing.assert_close(two(image, network), one(image, network), atol=1e-5, rtol=0)
    assert torch.get_num_threads() == threads
    assert (one.batching["images_per_call"], two.batching["images_per_call"]) == (8, 4)
    with pytest.raises(ValueError, match="cpu_workers"):
        make_inferer(cpu_workers=0)
