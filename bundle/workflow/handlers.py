"""Ignite handlers the workflows need: checked checkpoint loading, a resumable checkpoint that
keeps the last good state (also on Ctrl-C and SIGTERM), a NaN-loss stop, a time limit and a
progress bar."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar as IgniteProgressBar

from bundle.io.atomic import remove_stale_temporaries
from bundle.io.checkpoints import (
    CheckpointLoader,
    atomic_torch_save,
    networks_in,
    state_digest,
    unwrap_network,
)

logger = logging.getLogger(__name__)


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

    Ctrl-C (SIGINT) or SIGTERM (a scheduler's stop) while the engine runs ends the iteration in
    progress, saves, and then ends the process by the same signal, as it would have without the
    save; a second signal ends it at once.
    """

    STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)

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
        self.stopped_by: int | None = None

    def attach(self, engine: Engine) -> None:
        self.save_dict = {**self.save_dict, "trainer": engine}
        remove_stale_temporaries(self.path.parent)
        if self.resume and self.path.is_file():
            CheckpointLoader(str(self.path), self.save_dict, map_location="cpu").attach(engine)
            engine.add_event_handler(Events.STARTED, self._resumed)
        if self.interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self.save)
        engine.add_event_handler(Events.STARTED, self._save_after_epochs)
        engine.add_event_handler(Events.STARTED, self._catch_stop_signals)

    def _save_after_epochs(self, engine: Engine) -> None:
        """Registered once the run starts, so that the end-of-epoch save comes after every other
        handler of that event, validation included: the saved state holds its best score."""
        if not engine.has_event_handler(self.save, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED | Events.TERMINATE, self.save)
            engine.add_event_handler(Events.TERMINATE, self._end_if_signalled)

    def _catch_stop_signals(self, engine: Engine) -> None:
        """While the engine runs, a stop signal terminates it (which saves) instead of the
        process; only the main thread can install signal handlers."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous = {stop: signal.getsignal(stop) for stop in self.STOP_SIGNALS}
        for stop in self.STOP_SIGNALS:
            signal.signal(stop, lambda number, _frame: self._stop(engine, number))

        def release(engine: Engine) -> None:
            for stop, handler in previous.items():
                signal.signal(stop, handler)

        engine.add_event_handler(Events.COMPLETED, release)

    def _stop(self, engine: Engine, number: int) -> None:
        if self.stopped_by is not None:  # asked twice: stop now
            self._end_by(number)
        self.stopped_by = number
        logger.warning(
            f"{signal.Signals(number).name} received: stopping after this iteration, saving "
            f"{self.path} (again to stop at once)"
        )
        engine.terminate()

    def _end_if_signalled(self, engine: Engine) -> None:
        """After the save on termination: end the process by the signal that stopped it."""
        if self.stopped_by is not None:
            logger.warning(
                f"stopped by {signal.Signals(self.stopped_by).name} at iteration "
                f"{engine.state.iteration}; state saved in {self.path}, rerun to resume"
            )
            self._end_by(self.stopped_by)

    @staticmethod
    def _end_by(number: int) -> None:
        logging.shutdown()
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)

    def _resumed(self, engine: Engine) -> None:
        weights = ", ".join(
            f"{key} {state_digest(network.state_dict())}"
            for key, network in networks_in(self.save_dict).items()
        )
        logger.info(
            f"resumed from {self.path} at epoch {engine.state.epoch} iteration "
            f"{engine.state.iteration} (weights {weights})"
        )

    def save(self, engine: Engine) -> None:
        """Write the state; under DDP only rank 0 writes, without the wrapper's prefixes."""
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        networks = networks_in(self.save_dict).values()
        if not all(torch.isfinite(p).all() for n in networks for p in n.parameters()):
            logger.warning(
                f"weights are NaN or Inf, not saved: {self.path} keeps the last good state"
            )
            return
        state = {key: unwrap_network(obj).state_dict() for key, obj in self.save_dict.items()}
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
            {k: unwrap_network(v).state_dict() for k, v in self.save_dict.items()}, self.path
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
