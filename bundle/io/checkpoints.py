"""Checkpoints: atomic saving, and loading that checks the file, the network's parameters and
the settings the weights were trained with before any work."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader as MonaiCheckpointLoader
from torch.nn.parallel import DistributedDataParallel

from bundle.data.layouts import DatasetError, reason
from bundle.io.atomic import atomic_path
from bundle.workflow.options import OptionError

logger = logging.getLogger(__name__)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save through a temporary file and a rename: a kill leaves the old file or the new."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def unwrap_network(obj: Any) -> Any:
    """The network inside a DDP or DataParallel wrapper (checkpoints hold it without prefixes)."""
    return obj.module if isinstance(obj, DistributedDataParallel | torch.nn.DataParallel) else obj


def networks_in(objects: dict[str, Any]) -> dict[str, torch.nn.Module]:
    return {
        k: unwrap_network(v)
        for k, v in objects.items()
        if isinstance(unwrap_network(v), torch.nn.Module)
    }


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """A short fingerprint of a state dict's names and values, to tell in a log which weights a
    run started from."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def _differences(saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    found = []
    for name, tensor in expected.items():
        if name not in saved:
            found.append(f"{name} is missing from the file")
        elif tuple(saved[name].shape) != tuple(tensor.shape):
            found.append(
                f"{name} has shape {tuple(saved[name].shape)} in the file, "
                f"{tuple(tensor.shape)} in the network"
            )
    found += [f"{name} in the file is not in the network" for name in saved if name not in expected]
    return found


def _plain(value: Any) -> Any:
    """A setting as JSON would hold it (tuples as lists), so that saved and current compare."""
    return json.loads(json.dumps(value, default=str))


def describe_network(network: torch.nn.Module) -> dict[str, Any]:
    """What defines a network beyond its parameters' names and shapes (which loading checks):
    its class and the layer settings that have no parameters of their own."""
    groups, heads, dropout = set(), set(), set()
    for module in network.modules():
        if isinstance(module, torch.nn.GroupNorm):
            groups.add(module.num_groups)
        if isinstance(getattr(module, "num_heads", None), int):
            heads.add(module.num_heads)
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            dropout.add(float(module.p))
    return {
        "class": type(network).__name__,
        "norm_groups": sorted(groups),
        "attention_heads": sorted(heads),
        "dropout": sorted(dropout),
    }


def describe_scheduler(scheduler: Any) -> dict[str, Any] | None:
    """A noise scheduler's meaning: its length, what the network predicts, whether it learns
    its variance, and its noise levels (alpha-bar at five timesteps, which name the schedule
    and its beta range)."""
    if scheduler is None:
        return None
    abar = scheduler.alphas_cumprod.detach().cpu().double()
    last = len(abar) - 1
    points = [0, last // 4, last // 2, 3 * last // 4, last]
    return {
        "num_train_timesteps": len(abar),
        "prediction_type": getattr(scheduler, "prediction_type", "epsilon"),
        "variance_type": getattr(scheduler, "variance_type", None),
        "alphas_cumprod": {str(t): float(f"{abar[t].item():.6g}") for t in points},
    }


class WeightSettings:
    """The settings that give weights their meaning, stored with every checkpoint training
    writes (``last.pt``, ``model.pt``) and compared with the config in use whenever one is
    loaded: the same shapes with another prediction type, noise schedule, region list, field
    of view, pixel size or normalisation load without complaint and give wrong masks.

    Args:
        network: the network the weights belong to (see :func:`describe_network`).
        scheduler: the diffusion noise scheduler, or None for a plain segmentation network.
        settings: any further settings, by name (regions, image size, spacing, normalisation).
    """

    optional_in_checkpoint = True

    def __init__(self, network: torch.nn.Module, scheduler: Any = None, **settings: Any) -> None:
        self.settings = _plain(
            {
                "network": describe_network(unwrap_network(network)),
                "scheduler": describe_scheduler(scheduler),
                **settings,
            }
        )

    def state_dict(self) -> dict[str, Any]:
        return dict(self.settings)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to load: :func:`check_checkpoint` compared the file's settings already."""

    def differences(self, saved: dict[str, Any]) -> list[str]:
        """One phrase per setting that differs between a checkpoint and this config, named by
        its path (``scheduler.prediction_type``)."""
        return _differing(saved, self.settings)


def _differing(saved: Any, current: Any, name: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(saved) | set(current)):
            path = f"{name}.{key}" if name else key
            found += _differing(saved.get(key), current.get(key), path)
        return found
    if saved == current:
        return []
    return [f"{name} {json.dumps(saved)} in the file, {json.dumps(current)} in the config"]


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def check_checkpoint(path: str | Path, load_dict: dict[str, Any], shown: int = 3) -> list[str]:
    """Raise DatasetError, one line naming the file and what is wrong, unless the checkpoint
    reads, holds for every network of ``load_dict`` parameters of the same names and shapes
    (torch's own error is a page of names, raised once the run has started), and was trained
    with the same :class:`WeightSettings` as the config (shapes that match can still mean
    something else). Returns the keys of ``load_dict`` the file does not hold and that may be
    missing (``optional_in_checkpoint``: files written before they existed); a bare state dict
    stands for the one network's entry."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, not a torch file, pickled objects
        raise DatasetError(f"checkpoint {path} cannot be read ({reason(err)})") from err
    if not isinstance(checkpoint, dict):
        raise DatasetError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a dict")
    networks = networks_in(load_dict)
    if len(networks) == 1 and _is_state_dict(checkpoint):  # a bare state dict, as MONAI reads it
        checkpoint = {next(iter(networks)): checkpoint}
    shapes = []
    for key, network in networks.items():
        if not isinstance(checkpoint.get(key), dict):
            raise DatasetError(
                f"checkpoint {path} has no {key!r} state dict (it has {', '.join(checkpoint)})"
            )
        found = _differences(checkpoint[key], network.state_dict())
        more = f" (and {len(found) - shown} more)" if len(found) > shown else ""
        shapes += [f"{'; '.join(found[:shown])}{more}"] if found else []
    # the settings too, so that a setting that changes shapes (regions, learn_sigma) is named
    settings = [
        found
        for key, obj in load_dict.items()
        if isinstance(obj, WeightSettings) and isinstance(checkpoint.get(key), dict)
        for found in obj.differences(checkpoint[key])
    ]
    trained = f"trained with other settings than the config's: {'; '.join(settings)}"
    if shapes:
        also = f"; it was {trained}" if settings else ""
        raise DatasetError(f"checkpoint {path} does not match network_def: {shapes[0]}{also}")
    if settings:
        raise DatasetError(f"checkpoint {path} was {trained}")
    for key, obj in load_dict.items():
        if isinstance(obj, Engine) and isinstance(checkpoint.get(key), dict):
            _check_epochs(path, checkpoint[key], obj)
    missing = [
        key
        for key, obj in load_dict.items()
        if key not in checkpoint and getattr(obj, "optional_in_checkpoint", False)
    ]
    if any(isinstance(load_dict[key], WeightSettings) for key in missing):
        logger.warning(f"checkpoint {path} stores no settings: they cannot be checked")
    return missing


def _check_epochs(path: Path, saved: dict[str, Any], engine: Engine) -> None:
    """Refuse to resume a training state that has run more epochs than the run may (ignite
    would stop with a traceback about ``max_epochs``): the fix is ``--epochs``."""
    per_epoch = saved.get("epoch_length") or 0
    done = saved.get("iteration", 0) // per_epoch if per_epoch else 0
    wanted = engine.state.max_epochs
    if wanted is not None and done > wanted:
        raise OptionError(
            f"--epochs {wanted} is below the {done} epochs that {path} has trained already: "
            f"give --epochs {done} or more to train on from it, or another --ckpt_dir to start "
            "over"
        )


class CheckpointLoader(MonaiCheckpointLoader):
    """MONAI's CheckpointLoader that checks the file (:func:`check_checkpoint`) when the
    workflow is built, so that a missing file or weights of another network stop the run
    with one line before any work."""

    def attach(self, engine: Engine) -> None:
        missing = check_checkpoint(self.load_path, self.load_dict)
        self.load_dict = {k: v for k, v in self.load_dict.items() if k not in missing}
        super().attach(engine)


def load_weights(network: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load a checkpoint's weights into ``network`` (in eval mode) for scripts that run it
    outside a workflow: a bare state dict (saved by other code) or a training checkpoint
    ``{"model": state_dict, "settings": ...}``, checked first by :func:`check_checkpoint`."""
    check_checkpoint(path, {"model": network})
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    network.load_state_dict(checkpoint if _is_state_dict(checkpoint) else checkpoint["model"])
    return network.eval()
