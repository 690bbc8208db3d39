"""Ignite handlers the workflows need: checked checkpoint loading, a resumable checkpoint that
keeps the last good state, a NaN-loss stop, a time limit and a progress bar."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar as IgniteProgressBar
from monai.handlers import CheckpointLoader as MonaiCheckpointLoader
from torch.nn.parallel import DistributedDataParallel

from bundle.atomic import atomic_path, remove_stale_temporaries
from bundle.layouts import DatasetError, reason

logger = logging.getLogger(__name__)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save through a temporary file and a rename: a kill leaves the old file or the new."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def _unwrap(obj: Any) -> Any:
    """The network inside a DDP or DataParallel wrapper (checkpoints hold it without prefixes)."""
    return obj.module if isinstance(obj, DistributedDataParallel | torch.nn.DataParallel) else obj


def _networks(objects: dict[str, Any]) -> dict[str, torch.nn.Module]:
    return {k: _unwrap(v) for k, v in objects.items() if isinstance(_unwrap(v), torch.nn.Module)}


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
                "network": describe_network(_unwrap(network)),
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
    networks = _networks(load_dict)
    if len(networks) == 1 and _is_state_dict(checkpoint):  # a bare state dict, as MONAI reads it
        checkpoint = {next(iter(networks)): checkpoint}
    for key, network in networks.items():
        if not isinstance(checkpoint.get(key), dict):
            raise DatasetError(
                f"checkpoint {path} has no {key!r} state dict (it has {', '.join(checkpoint)})"
            )
        found = _differences(checkpoint[key], network.state_dict())
        if found:
            more = f" (and {len(found) - shown} more)" if len(found) > shown else ""
            raise DatasetError(
                f"checkpoint {path} does not match network_def: {'; '.join(found[:shown])}{more}"
            )
    for key, obj in load_dict.items():
        if isinstance(obj, WeightSettings) and isinstance(checkpoint.get(key), dict):
            found = obj.differences(checkpoint[key])
            if found:
                raise DatasetError(
                    f"checkpoint {path} was trained with other settings than the config's: "
                    + "; ".join(found)
                )
    missing = [
        key
        for key, obj in load_dict.items()
        if key not in checkpoint and getattr(obj, "optional_in_checkpoint", False)
    ]
    if any(isinstance(load_dict[key], WeightSettings) for key in missing):
        logger.warning(f"checkpoint {path} stores no settings: they cannot be checked")
    return missing


class CheckpointLoader(MonaiCheckpointLoader):
    """MONAI's CheckpointLoader that checks the file (:func:`check_checkpoint`) when the
    workflow is built, so that a missing file or weights of another network stop the run
    with one line before any work."""

    def attach(self, engine: Engine) -> None:
        missing = check_checkpoint(self.load_path, self.load_dict)
        self.load_dict = {k: v for k, v in self.load_dict.items() if k not in missing}
        super().attach(engine)


def _on_any_rank(flag: bool, engine: Engine) -> bool:
    """Whether ``flag`` holds on any DDP rank (``flag`` itself without DDP): a rank that stopped
    alone would leave the others waiting in their gradient all-reduce."""
    value = torch.tensor(float(flag))
    if dist.is_available() and dist.is_initialized():
        value = value.to(engine.state.device if hasattr(engine.state, "device") else "cpu")
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.item() > 0


class ResumableCheckpoint:
    """Keep the whole training state in one file and pick it up again after a kill.

    Saves ``save_dict`` (network, optimizer, lr scheduler, ...) and the engine it is attached to
    (under ``"trainer"``: its epoch and iteration) to ``save_dir/filename`` every ``interval``
    iterations, at the end of every epoch and when the run is terminated (time limit, NaN loss),
    through an atomic rename, and never with non-finite weights, so the file always holds the
    last good state. If the file exists (and ``resume`` is true) it is checked and loaded when
    the run starts, and the log says from which iteration and weights training continues;
    hidden temporaries that a save killed midway left are deleted then.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict[str, Any],
        interval: int = 100,
        filename: str = "last.pt",
        resume: bool = True,
    ) -> None:
        self.path = Path(save_dir) / filename
        self.save_dict = save_dict
        self.interval = interval
        self.resume = resume

    def attach(self, engine: Engine) -> None:
        self.save_dict = {**self.save_dict, "trainer": engine}
        remove_stale_temporaries(self.path.parent)
        if self.resume and self.path.is_file():
            CheckpointLoader(str(self.path), self.save_dict, map_location="cpu").attach(engine)
            engine.add_event_handler(Events.STARTED, self._resumed)
        if self.interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self.save)
        engine.add_event_handler(Events.STARTED, self._save_after_epochs)

    def _save_after_epochs(self, engine: Engine) -> None:
        """Registered once the run starts, so that the end-of-epoch save comes after every other
        handler of that event, validation included: the saved state holds its best score."""
        if not engine.has_event_handler(self.save, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED | Events.TERMINATE, self.save)

    def _resumed(self, engine: Engine) -> None:
        weights = ", ".join(
            f"{key} {state_digest(network.state_dict())}"
            for key, network in _networks(self.save_dict).items()
        )
        logger.info(
            f"resumed from {self.path} at epoch {engine.state.epoch} iteration "
            f"{engine.state.iteration} (weights {weights})"
        )

    def save(self, engine: Engine) -> None:
        """Write the state; under DDP only rank 0 writes, without the wrapper's prefixes."""
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        networks = _networks(self.save_dict).values()
        if not all(torch.isfinite(p).all() for n in networks for p in n.parameters()):
            logger.warning(
                f"weights are NaN or Inf, not saved: {self.path} keeps the last good state"
            )
            return
        state = {key: _unwrap(obj).state_dict() for key, obj in self.save_dict.items()}
        atomic_torch_save(state, self.path)


class BestModelSaver:
    """Save ``save_dict`` to ``save_dir/filename`` each time the evaluator it is attached to
    scores better than ever before (its key metric, else ``metric_name``), through an atomic
    rename: a kill leaves the previous best model whole (MONAI's CheckpointSaver deletes it
    first). The best score is training state: put this handler in the
    :class:`ResumableCheckpoint`'s ``save_dict`` so that a resumed training replaces
    ``model.pt`` only with a better model.

    Args:
        save_dir: folder of the file.
        save_dict: what to save, by name (each with a ``state_dict``).
        filename: the file's name.
        metric_name: the metric to compare; the evaluator's key metric when None.
    """

    optional_in_checkpoint = True

    def __init__(
        self,
        save_dir: str,
        save_dict: dict[str, Any],
        filename: str = "model.pt",
        metric_name: str | None = None,
    ) -> None:
        self.path = Path(save_dir) / filename
        self.save_dict = save_dict
        self.metric_name = metric_name
        self.best: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        name = self.metric_name or engine.state.key_metric_name
        score = float(engine.state.metrics[name])
        if not math.isfinite(score) or (self.best is not None and score <= self.best):
            return
        previous, self.best = self.best, score
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        atomic_torch_save(
            {k: _unwrap(v).state_dict() for k, v in self.save_dict.items()}, self.path
        )
        before = "" if previous is None else f" (best before: {previous:.4f})"
        logger.info(f"{name} {score:.4f}{before}: saved {self.path}")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")


class StopOnNonFiniteLoss:
    """End training at the first NaN or Inf loss with one error line, rather than training on
    (and checkpointing) poisoned weights; :meth:`check` (the workflow's ``finalize``) then makes
    the run exit with code 1. ``checkpoint`` keeps the last good state."""

    def __init__(
        self, checkpoint: ResumableCheckpoint, output_transform: Callable[[Any], Any]
    ) -> None:
        self.checkpoint = checkpoint
        self.output_transform = output_transform
        self.stopped_at: int | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = float(self.output_transform(engine.state.output))
        if not _on_any_rank(not math.isfinite(loss), engine):
            return
        self.stopped_at = engine.state.iteration
        path = self.checkpoint.path
        saved = f"last good state saved in {path}" if path.is_file() else f"no {path} saved yet"
        value = "NaN" if math.isnan(loss) else "Inf" if math.isinf(loss) else "NaN on another rank"
        logger.error(f"loss became {value} at iteration {self.stopped_at}; {saved}")
        engine.terminate()

    def check(self) -> None:
        """Exit with code 1 if training was stopped by a NaN or Inf loss."""
        if self.stopped_at is not None:
            sys.exit(1)


class ProgressBar:
    """tqdm progress bar over an engine's iterations (training batches, inference cases), with
    the rate and, given an ``output_transform``, e.g. the loss."""

    def __init__(self, output_transform: Callable[[Any], Any] | None = None) -> None:
        self.output_transform = output_transform

    def attach(self, engine: Engine) -> None:
        bar = IgniteProgressBar(persist=True)
        if self.output_transform is None:
            bar.attach(engine)
        else:
            bar.attach(engine, output_transform=self.output_transform)


class TimeLimit:
    """Stop training after ``limit_sec`` of wall-clock time, e.g. to compare methods at equal
    training time; the checkpoint handler saves on termination, so the run can be resumed.

    Under DDP the ranks agree on when to stop (one all-reduce of a flag per iteration): a rank
    that stopped alone would leave the others waiting in their gradient all-reduce.
    """

    def __init__(self, limit_sec: float) -> None:
        self.limit_sec = limit_sec
        self._start = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _started(self, engine: Engine) -> None:
        self._start = time.perf_counter()

    def __call__(self, engine: Engine) -> None:
        if _on_any_rank(time.perf_counter() - self._start > self.limit_sec, engine):
            logger.info(f"training time limit of {self.limit_sec:.0f} s reached, stopping")
            engine.terminate()
