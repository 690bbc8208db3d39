"""Implicit-ensemble inferer (Wolleb et al. 2022): N sampled masks per slice -> mean, variance,
votes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from torch import nn
from tqdm import tqdm

from bundle.data.layouts import MODALITIES
from bundle.diffusion.process import network_input, x0_to_probability
from bundle.diffusion.samplers import Sampler
from bundle.ensemble.networks import NetworkEnsemble
from bundle.ensemble.precision import NetworkRunner
from bundle.ensemble.workers import map_calls
from bundle.workflow.options import flag

STATISTICS = ("mean", "variance", "votes")
"""The per-region maps of the ensemble, in the order of the inferer's output channels."""

THRESHOLD = 0.5
"""The paper's threshold: of each sample for its vote, and of the mean for the segmentation
(the shipped diffusion model's is :data:`bundle.ensemble.outputs.SEGMENTATION_THRESHOLD`)."""

MEMBER_SEED_STRIDE = 1000
"""Member j of a :class:`NetworkEnsemble` draws its noise from ``seed + 1000 j``: apart from
the seeds of repeated draws (``seed + 1``, ``seed + 2``, ...)."""


class SliceEnsembleInferer(Inferer):
    """Segment 2-D slices ``(B, 4, H, W)`` or 3-D volumes ``(B, 4, H, W, D)`` (axial slices along
    the last axis) as an ensemble of N masks per slice, returned as mean and variance.

    Subclasses draw the N masks of the kept slices (:meth:`_samples`); this class moves volumes
    to slices and back, skips slices without brain, and assembles the output: ``3 * C`` channels,
    C = ``mask_channels`` (one per region, ``num_mask_channels`` in the configs): the ensemble
    mean, the population variance (0 where all samples agree), then the votes (the fraction of
    samples above 0.5, which the case's uncertainty score reads). ``return_samples`` appends
    the ``N * C`` sample channels, sample-major. ``nested`` makes every sample's channels nested
    regions (channel k inside channel k - 1, as BraTS's enhancing tumour lies in the core and the
    core in the whole tumour), so the mean and its thresholded masks are nested too. Slices with
    no voxel of their own modalities where ``|value| > brain_threshold`` cost no network call
    and get 0 everywhere; so do the pixels of kept slices where none exceeds it (outside the
    brain).
    Only the in-plane bounding box of the brain, grown to a multiple of ``spatial_multiple``
    (what the network's downsampling needs), goes through the network. A MetaTensor input gives a
    MetaTensor output with the input's meta data, as ``Invertd`` needs.
    """

    def __init__(
        self,
        num_samples: int = 5,
        seed: int = 0,
        memory_budget_mb: float = 4096,
        brain_threshold: float = 0.0,
        mask_channels: int = 1,
        return_samples: bool = False,
        spatial_multiple: int = 8,
        cpu_batch_size: int = 8,
        nested: bool = False,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        self.num_samples = num_samples
        self.seed = seed
        self.memory_budget_mb = memory_budget_mb
        self.brain_threshold = brain_threshold
        self.mask_channels = mask_channels
        self.return_samples = flag(return_samples)
        self.spatial_multiple = spatial_multiple
        self.cpu_batch_size = cpu_batch_size
        self.nested = flag(nested)

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Run the ensemble; ``args``/``kwargs`` exist for the ``Inferer`` API and are unused."""
        if inputs.ndim not in (4, 5):
            shape = tuple(inputs.shape)
            raise ValueError(f"Expected (B, C, H, W) or (B, C, H, W, D) inputs, got {shape}.")
        slices = (inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs).float()
        volume = slices.ndim == 5
        if volume:  # axial slices into the batch: (B, C, H, W, D) -> (B * D, C, H, W)
            batch, depth = slices.shape[0], slices.shape[-1]
            slices = slices.movedim(-1, 1).reshape(batch * depth, *slices.shape[1:-1])

        maps = len(STATISTICS) + self.num_samples * self.return_samples
        out_channels = self.mask_channels * maps
        # a normal (not inference-mode) tensor, so that in-place post-processing stays allowed
        result = slices.new_zeros(slices.shape[0], out_channels, *slices.shape[2:])
        brain = self._brain(slices)
        keep = brain.flatten(1).any(1)
        if keep.any():
            # only the brain's in-plane bounding box is sampled: pixels outside it are air
            box = (..., *brain_box(brain[keep], self.spatial_multiple))
            kept_brain = brain[keep][box]
            with torch.inference_mode(), _eval_mode(network):
                probs = self._samples(slices[box], keep, kept_brain, network)
                if self.nested:  # each channel inside the one before it, sample by sample
                    probs = probs.cummin(dim=2).values
            kept = result.new_zeros(int(keep.sum()), *result.shape[1:])
            # no tumour, and no uncertainty about it, outside the brain
            kept[box] = self._statistics(probs) * kept_brain
            result[keep] = kept

        if volume:
            result = result.reshape(batch, depth, *result.shape[1:]).movedim(1, -1)
        if isinstance(inputs, MetaTensor):
            result = MetaTensor(result).copy_meta_from(inputs)
        return result

    def _brain(self, slices: torch.Tensor) -> torch.Tensor:
        """The (S, 1, H, W) brain mask of (S, C, H, W) slices: where any of the slice's own
        modalities (the first four channels; the rest may be its neighbours',
        :class:`~bundle.data.transforms.SliceContextd`) has ``|value| > brain_threshold``."""
        own = slices[:, : len(MODALITIES)]
        return (own.abs() > self.brain_threshold).any(1, keepdim=True)

    def _samples(
        self,
        slices: torch.Tensor,
        keep: torch.Tensor,
        brain: torch.Tensor,
        network: Callable[..., torch.Tensor],
    ) -> torch.Tensor:
        """The N masks in [0, 1] of the kept slices (``slices[keep]``, whose (kept, 1, H, W)
        brain mask is ``brain``), shape (N, kept, C, H, W)."""
        raise NotImplementedError

    def _statistics(self, probs: torch.Tensor) -> torch.Tensor:
        """Mean, variance, votes[, samples] channels from (N, kept, C, H, W) masks."""
        var, mean = torch.var_mean(probs, dim=0, correction=0)
        parts = [mean, var, (probs > THRESHOLD).float().mean(0)]
        if self.return_samples:
            parts.append(probs.movedim(0, 1).flatten(1, 2))
        return torch.cat(parts, dim=1)

    def _chunk(
        self,
        network: Callable[..., torch.Tensor],
        forward: Callable[[torch.Tensor], torch.Tensor],
        example: torch.Tensor,
        parallel: int = 1,
    ) -> int:
        """How many images go through the network at once: as many as the memory budget holds
        (shared by ``parallel`` calls side by side), and on a CPU at most ``cpu_batch_size``,
        since there an image costs more in a large batch (demo network at 88x104, 1 thread:
        35 ms an image at batch 4, 72 ms at 256). The last call's choice stays in
        :attr:`batching`, for reports."""
        per_image = activation_bytes_per_image(network, forward, example)
        chunk = max(1, int(self.memory_budget_mb * 2**20 // per_image // parallel))
        chunk = min(chunk, self.cpu_batch_size) if example.device.type == "cpu" else chunk
        self.batching = {
            "activation_mb_per_image": per_image / 2**20,
            "images_per_call": chunk,
            "calls_side_by_side": parallel,
        }
        return chunk


class ImplicitEnsembleInferer(SliceEnsembleInferer):
    """The implicit ensemble of Wolleb et al. (2022): N diffusion samples of the mask per slice.

    Each mask is drawn with ``sampler`` from a network called as
    ``network(x=network_input(x_t, image), timesteps=t)``, the input it was trained on (see
    :mod:`bundle.diffusion.process`), and read as a probability, ``(x0 + 1) / 2``.

    All samples of all kept slices form one state tensor whose initial noise is drawn from a
    generator seeded with ``seed`` in a fixed order, so results are reproducible and independent
    of ``memory_budget_mb`` up to float round-off: the budget only sets how many images go through
    the network at once (see :func:`activation_bytes_per_image`).

    Args:
        sampler: reverse-diffusion sampler (see ``bundle.diffusion.samplers.make_sampler``).
        num_samples: ensemble size N.
        seed: seed of the noise generator (created on the input's device).
        memory_budget_mb: memory allowed for network activations per forward pass.
        brain_threshold: slices with no ``|value| > brain_threshold`` are skipped.
        progress: show a tqdm bar over the sampler steps.
        amp: run the network in bfloat16 where the device computes it: autocast on CUDA
            (float16 without bf16 support), a bfloat16 copy on a CPU with AMX / AVX512-BF16
            (``bundle.ensemble.precision``); float32 elsewhere.
        mask_channels: C, the masks generated per slice (one per region); a network that learned
            its variance outputs 2 C channels, which the sampler splits.
        return_samples: append the individual samples to the output.
        spatial_multiple: the sampled box's height and width are multiples of it.
        cpu_batch_size: most images per network call on a CPU.
        nested: make the channels nested regions (see :class:`SliceEnsembleInferer`).
        slice_box_multiple: sample each slice in its own brain box, grown to a multiple of this
            many pixels (rounded up to a multiple of ``spatial_multiple``; :func:`box_calls`):
            fewer pixels through the network (docs/performance.md); 0: one box over all slices.
        cpu_workers: on a CPU, network calls run side by side on this many threads, each with
            one intra-op thread (:mod:`bundle.ensemble.workers`); 1: one call at a time, on
            PyTorch's intra-op threads. The memory budget is shared among them.
    """

    def __init__(
        self,
        sampler: Sampler,
        num_samples: int = 5,
        seed: int = 0,
        memory_budget_mb: float = 4096,
        brain_threshold: float = 0.0,
        progress: bool = False,
        amp: bool = True,
        mask_channels: int = 1,
        return_samples: bool = False,
        spatial_multiple: int = 8,
        cpu_batch_size: int = 8,
        nested: bool = False,
        cpu_workers: int = 1,
        slice_box_multiple: int = 16,
    ) -> None:
        super().__init__(
            num_samples,
            seed,
            memory_budget_mb,
            brain_threshold,
            mask_channels,
            return_samples,
            spatial_multiple,
            cpu_batch_size,
            nested,
        )
        if cpu_workers < 1:
            raise ValueError(f"cpu_workers must be >= 1, got {cpu_workers}.")
        self.cpu_workers = cpu_workers
        if slice_box_multiple < 0:
            raise ValueError(f"slice_box_multiple must be >= 0, got {slice_box_multiple}.")
        # what the network's downsampling needs, at least
        self.slice_box_multiple = -(-slice_box_multiple // spatial_multiple) * spatial_multiple
        self.sampler = sampler
        self.progress = progress
        self.amp = flag(amp)

    def _samples(
        self,
        slices: torch.Tensor,
        keep: torch.Tensor,
        brain: torch.Tensor,
        network: Callable[..., torch.Tensor],
    ) -> torch.Tensor:
        """A :class:`NetworkEnsemble` draws sample i with member ``i % K``, whose noise comes
        from seed ``seed + MEMBER_SEED_STRIDE * (i % K)`` (member 0's samples are those of a
        single network with ``seed``)."""
        members = list(network) if isinstance(network, NetworkEnsemble) else [network]
        shares = [len(range(j, self.num_samples, len(members))) for j in range(len(members))]
        drawn = [
            self._draw(slices, keep, brain, member, count, self.seed + MEMBER_SEED_STRIDE * j)
            for j, (member, count) in enumerate(zip(members, shares, strict=True))
            if count
        ]
        order = [drawn[i % len(members)][i // len(members)] for i in range(self.num_samples)]
        return torch.stack(order)

    def _draw(
        self,
        slices: torch.Tensor,
        keep: torch.Tensor,
        brain: torch.Tensor,
        network: Callable[..., torch.Tensor],
        num_samples: int,
        seed: int,
    ) -> torch.Tensor:
        """``num_samples`` masks of the kept slices drawn with one network, (N, kept, C, H, W)."""
        num_slices, _, height, width = slices.shape
        mask_channels = self.mask_channels
        image = slices[keep]
        kept = image.shape[0]
        generator = torch.Generator(device=slices.device).manual_seed(seed)
        # noise for every slice, then select: a slice's noise does not depend on skipped ones
        noise = torch.randn(
            (num_samples, num_slices, mask_channels, height, width),
            generator=generator,
            device=slices.device,
        )
        noise = noise[:, keep].reshape(num_samples * kept, mask_channels, height, width)
        runner = NetworkRunner(network, slices.device, self.amp)

        def forward(x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
            t = torch.zeros(len(x), dtype=torch.long, device=x.device) if t is None else t
            return runner(x, t)

        workers = self.cpu_workers if slices.device.type == "cpu" else 1
        example = network_input(noise[:1], image[:1])
        chunk = self._chunk(runner.network, forward, example, workers)
        calls = box_calls(
            brain if self.slice_box_multiple else torch.ones_like(brain),
            num_samples,
            chunk,
            self.slice_box_multiple or self.spatial_multiple,
        )

        def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            def call(box: BoxCall) -> torch.Tensor:
                # the state is sample-major: row r belongs to kept slice r % kept
                x = network_input(box.crop(x_t, box.rows), box.crop(image, box.rows % kept))
                return forward(x, t[box.rows])

            outputs = map_calls(call, calls, workers)
            # pixels outside every box are outside their slice's brain: their output, 0, is masked
            output = x_t.new_zeros(x_t.shape[0], outputs[0].shape[1], height, width)
            for box, out in zip(calls, outputs, strict=True):
                box.paste(output, out)
            return output

        with tqdm(total=self.sampler.num_steps, desc="sampling", disable=not self.progress) as bar:
            x0 = self.sampler.sample(denoise, noise, generator=generator, progress=bar.update)
        probs = x0_to_probability(x0)
        return probs.reshape(num_samples, kept, mask_channels, height, width)


class BoxCall(NamedTuple):
    """One network call: state ``rows`` (N x S sample-major rows), each read in its own box of
    one common size, whose pixel indices are ``ys`` (n, h, 1) and ``xs`` (n, 1, w)."""

    rows: torch.Tensor
    ys: torch.Tensor
    xs: torch.Tensor

    def crop(self, tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The boxes of ``tensor[index]``, (n, C, h, w)."""
        return tensor.movedim(1, -1)[index[:, None, None], self.ys, self.xs].movedim(-1, 1)

    def paste(self, target: torch.Tensor, values: torch.Tensor) -> None:
        """Write (n, C, h, w) ``values`` into the boxes of ``target[rows]``."""
        index = self.rows[:, None, None]
        target.movedim(1, -1)[index, self.ys, self.xs] = values.movedim(1, -1).to(target.dtype)


def box_calls(brain: torch.Tensor, num_samples: int, chunk: int, multiple: int) -> list[BoxCall]:
    """The network calls of one denoising step over ``num_samples`` x S slices: each slice in its
    own brain box (:func:`brain_box` of its (S, 1, H, W) ``brain``), so a slice's output does not
    depend on the others or on ``chunk``; rows whose boxes have one size go together, at most
    ``chunk`` a call. A brain mask of ones gives every slice the whole image (one size, the rows
    in order). Top and bottom slices of a head have small boxes: on the demo case the slices'
    own boxes, grown to multiples of 16 pixels, hold 68 % of the pixels of one box over all
    slices (docs/performance.md)."""
    slices = brain.shape[0]
    starts = torch.zeros(slices, 2, dtype=torch.long)
    by_size: dict[tuple[int, int], list[int]] = {}
    for index in range(slices):
        box_rows, box_cols = brain_box(brain[index : index + 1], multiple)
        starts[index] = torch.tensor([box_rows.start, box_cols.start])
        size = (box_rows.stop - box_rows.start, box_cols.stop - box_cols.start)
        by_size.setdefault(size, []).append(index)
    calls = []
    for (height, width), members in sorted(by_size.items()):
        member = torch.tensor(members)
        state_rows = (torch.arange(num_samples)[:, None] * slices + member).flatten()
        for rows in state_rows.split(chunk):
            first = starts[rows % slices]
            ys = first[:, 0, None, None] + torch.arange(height)[None, :, None]
            xs = first[:, 1, None, None] + torch.arange(width)[None, None, :]
            calls.append(BoxCall(*(i.to(brain.device) for i in (rows, ys, xs))))
    return calls


def brain_box(brain: torch.Tensor, multiple: int = 1) -> tuple[slice, slice]:
    """Rows and columns of the in-plane bounding box of a (S, 1, H, W) brain mask over all its
    slices, grown (centred, within the image) to a multiple of ``multiple`` pixels."""
    box = []
    for axis, size in ((-2, brain.shape[-2]), (-1, brain.shape[-1])):
        other = -1 if axis == -2 else -2
        inside = torch.nonzero(brain.any(other).flatten(0, -2).any(0)).flatten()
        start, stop = int(inside[0]), int(inside[-1]) + 1
        length = min(size, -(-(stop - start) // multiple) * multiple)
        start = min(max(0, start - (length - (stop - start)) // 2), size - length)
        box.append(slice(start, start + length))
    return box[0], box[1]


def activation_bytes_per_image(
    network: Callable[..., torch.Tensor],
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
) -> int:
    """Conservative activation memory of one image, from a probe forward pass (batch of 1).

    ``forward`` runs ``network`` on ``x``; this sums the bytes of every leaf module's output
    (each conv, norm, activation, and the attention matrices via the attention dropout of a
    ``DiffusionModelUNet``). Inference frees most of these before the pass ends, so the sum
    over-estimates the peak (about 5x for a 4-level ``DiffusionModelUNet`` on CPU), which leaves
    headroom for temporaries that are not module outputs (concatenations, kernel workspaces) and
    needs no device-specific memory statistics. Never less than the network input, e.g. when
    hooks do not fire (compiled modules).
    """
    total = 0

    def count(_module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal total
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()

    modules = network.modules() if isinstance(network, nn.Module) else ()
    handles = [m.register_forward_hook(count) for m in modules if next(m.children(), None) is None]
    try:
        forward(x)
    finally:
        for handle in handles:
            handle.remove()
    return max(total, x.numel() * x.element_size())


@contextlib.contextmanager
def _eval_mode(network: Callable[..., torch.Tensor]) -> Iterator[None]:
    """Put an ``nn.Module`` in eval mode and restore its previous mode afterwards."""
    if not isinstance(network, nn.Module):
        yield
        return
    was_training = network.training
    network.eval()
    try:
        yield
    finally:
        network.train(was_training)
