"""Ignite handlers the workflows need: checked checkpoint loading, a resumable checkpoint that
keeps the last good state, a NaN-loss stop, a time limit and a progress bar."""

from __future__ import annotations

import hashlib
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


def check_checkpoint(path: str | Path, load_dict: dict[str, Any], shown: int = 3) -> None:
    """Raise DatasetError, one line naming the file and its first ``shown`` differences, unless
    the checkpoint reads and holds, for every network of ``load_dict``, parameters of the same
    names and shapes: torch's own error is a page of names, raised once the run has started."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, not a torch file, pickled objects
        raise DatasetError(f"checkpoint {path} cannot be read ({reason(err)})") from err
    if not isinstance(checkpoint, dict):
        raise DatasetError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a dict")
    first = next(iter(load_dict))
    if len(load_dict) == 1 and first not in checkpoint:  # a bare state dict, as MONAI reads it
        checkpoint = {first: checkpoint}
    for key, network in _networks(load_dict).items():
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


class CheckpointLoader(MonaiCheckpointLoader):
    """MONAI's CheckpointLoader that checks the file (:func:`check_checkpoint`) when the
    workflow is built, so that a missing file or weights of another network stop the run
    with one line before any work."""

    def attach(self, engine: Engine) -> None:
        check_checkpoint(self.load_path, self.load_dict)
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
