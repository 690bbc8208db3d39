"""The precision the ensemble's network runs in: bfloat16 wherever the device computes it natively.

Sampling thresholds the mean of N masks in [0, 1] at 0.5 and reports their variance, so the
network's output needs about two correct decimals, which bfloat16 (8 bits of mantissa) gives;
the sampler's state and coefficients stay float32. Measured side by side (docs/performance.md):
on a CPU with AMX / AVX512-BF16 a bfloat16, channels-last copy of the demo network takes a
third to a half of the float32 time per image, more than autocast gains (which casts the weights
at every call and mixes float32 and bfloat16 activations). A CPU without those instructions has
no fast bfloat16 to use, so the network stays float32 there. On CUDA: autocast to bfloat16
(float16 without it), as before.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch
from torch import nn


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AMX tiles or AVX512-BF16)."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def precision_mode(device: torch.device, amp: bool) -> str:
    """The mode for ``device``: autocast (CUDA with ``amp``), bf16 (a CPU that computes it, with
    ``amp``) or fp32."""
    if amp and device.type == "cuda":
        return "autocast"
    if amp and device.type == "cpu" and cpu_computes_bf16():
        return "bf16"
    return "fp32"


class NetworkRunner:
    """Calls a diffusion U-Net as ``runner(x, t)`` in the precision :func:`precision_mode`
    picks, returning float32.

    In "bf16" mode it runs a bfloat16 channels-last copy of ``network`` (made once, here), so
    the caller's network and its weights are left as they were. :attr:`network` is the module
    that runs, for callers that hook its layers (the memory probe).
    """

    def __init__(self, network: Callable[..., torch.Tensor], device: torch.device, amp: bool):
        self.mode = precision_mode(device, amp) if isinstance(network, nn.Module) else "fp32"
        self.network = network
        if self.mode == "bf16":
            with torch.inference_mode(False):  # a module's copy must not hold inference tensors
                bf16 = copy.deepcopy(getattr(network, "module", network))  # unwrap DDP
                self.network = bf16.to(torch.bfloat16, memory_format=torch.channels_last)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.mode == "bf16":
            x = x.to(torch.bfloat16, memory_format=torch.channels_last)
        with self._autocast():
            return self.network(x=x, timesteps=t).float()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.mode != "autocast":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)
