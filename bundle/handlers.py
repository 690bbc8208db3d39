"""Ignite handlers the training workflow needs: a resumable checkpoint and a progress bar."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar as IgniteProgressBar
from monai.handlers import CheckpointLoader
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save through a temporary file and a rename: a kill leaves the old file or the new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class ResumableCheckpoint:
    """Keep the whole training state in one file and pick it up again after a kill.

    Saves ``save_dict`` (network, optimizer, lr scheduler, ...) and the engine it is attached to
    (under ``"trainer"``: its epoch and iteration) to ``save_dir/filename`` every ``interval``
    iterations, at the end of every epoch and when the run is terminated (time limit), through
    an atomic rename. If the file exists (and ``resume`` is true) it is loaded when the run
    starts, so training continues where the saved run stopped.
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
        if self.resume and self.path.is_file():
            logger.info(f"resuming training from {self.path}")
            CheckpointLoader(str(self.path), self.save_dict, map_location="cpu").attach(engine)
        if self.interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self.save)
        engine.add_event_handler(Events.EPOCH_COMPLETED | Events.TERMINATE, self.save)

    def save(self, engine: Engine) -> None:
        """Write the state; under DDP only rank 0 writes, without the wrapper's prefixes."""
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        state = {
            key: (obj.module if isinstance(obj, DistributedDataParallel) else obj).state_dict()
            for key, obj in self.save_dict.items()
        }
        atomic_torch_save(state, self.path)


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
        over = torch.tensor(float(time.perf_counter() - self._start > self.limit_sec))
        if dist.is_available() and dist.is_initialized():
            over = over.to(engine.state.device if hasattr(engine.state, "device") else "cpu")
            dist.all_reduce(over, op=dist.ReduceOp.MAX)
        if over.item() > 0:
            logger.info(f"training time limit of {self.limit_sec:.0f} s reached, stopping")
            engine.terminate()
