"""The diffusion training step: the tumour mask is x0, the MR image is the condition."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines.utils import DiffusionPrepareBatch
from monai.networks.schedulers import Scheduler


def mask_to_x0(mask: torch.Tensor) -> torch.Tensor:
    """Binary masks {0, 1} become diffusion samples in {-1, +1}, centred like the noise."""
    return mask * 2.0 - 1.0


class MaskDiffusionPrepareBatch(DiffusionPrepareBatch):
    """MONAI's diffusion batch preparation with the roles of the keys swapped.

    ``DiffusionPrepareBatch`` noises the batch's ``image``; here the mask (``label``) is noised and
    the image is concatenated to it (``mode="concat"``, noisy mask first, as
    ``DiffusionInferer`` and the sampling code both do).
    """

    def __init__(
        self,
        num_train_timesteps: int,
        mask_key: str = "label",
        condition_key: str = "image",
        scheduler: Scheduler | None = None,
    ) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps, condition_name=condition_key)
        self.mask_key = mask_key
        self.scheduler = scheduler
        self.prediction_type = getattr(scheduler, "prediction_type", "epsilon")

    def get_target(
        self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """What the network learns to predict: the noise (the paper's), x0 or v, as the
        scheduler's ``prediction_type`` says (the samplers read the same attribute)."""
        if self.prediction_type == "sample":
            return images
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(images, noise, timesteps)
        return noise

    def __call__(
        self,
        batchdata: Mapping[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        x0 = mask_to_x0(batchdata[self.mask_key].to(device, non_blocking=non_blocking, **kwargs))
        noise = self.get_noise(x0)
        timesteps = self.get_timesteps(x0)
        condition = batchdata[self.condition_name].to(device, non_blocking=non_blocking, **kwargs)
        infer_kwargs = {
            "noise": noise,
            "timesteps": timesteps,
            "condition": condition,
            "mode": "concat",
        }
        return x0, self.get_target(x0, noise, timesteps), (), infer_kwargs
