"""Ignite handlers the workflows need: checked checkpoint loading, a resumable checkpoint that
keeps the last good state (also on Ctrl-C and SIGTERM), validation that runs at least once, a
report of what a training run did, a NaN-loss stop, a time limit and a progress bar."""

from __future__ import annotations

import json
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
from monai.handlers import ValidationHandler

from bundle.io.atomic import remove_stale_temporaries, write_text
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
    iterations, at the end of every epoch and when the run ends (also when it is terminated: time
    limit, NaN loss), through an atomic rename, and never with non-finite weights, so the file
    always holds the last good state. If the file exists and ``resume`` is true it is checked
    and loaded when the run starts, and the log says from which iteration and weights training
    continues; with ``resume`` false the run starts at epoch 0 from the weights the network has
    (MONAI Label's requests: it loads ``model.pt`` itself). Hidden temporaries that a save
    killed midway left are deleted when the run starts.

    Ctrl-C (SIGINT) or SIGTERM (a scheduler's stop) while the engine runs ends the iteration in
    progress, saves, and then ends the process by the same signal, as it would have without the
    save (before the end-of-run handlers, such as a last validation); a second signal ends it at
    once.
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
        """Registered once the run starts, so that the end-of-epoch and end-of-run saves come
        after every other handler of those events, validation included: the saved state holds
        its best score."""
        if not engine.has_event_handler(self.save, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED | Events.COMPLETED, self.save)
            # a signal ends the process before the end-of-run handlers: save first
            engine.add_event_handler(Events.TERMINATE, self.save)
            engine.add_event_handler(Events.TERMINATE, self._end_if_signalled)
            # a signal just after ignite's last check of an epoch ends the run as completed,
            # not terminated (the loop's own condition reads the flag): saved, it ends there
            engine.add_event_handler(Events.COMPLETED, self._end_if_signalled)

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


class Validation(ValidationHandler):
    """MONAI's ValidationHandler (every ``interval`` epochs), and once more when a run ends on an
    epoch it did not validate, so that every run validates at least once: a run of fewer epochs
    than ``interval`` (a MONAI Label training request of one epoch) still scores its model,
    saves it as ``model.pt`` when better and reports the score. A run stopped early (time limit,
    NaN loss) ends without the extra validation; rerunning it resumes."""

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        self._pending = False
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._note_epoch)
        engine.add_event_handler(Events.COMPLETED, self._validate_at_end)

    def _note_epoch(self, engine: Engine) -> None:
        self._pending = engine.state.epoch % self.interval != 0

    def _validate_at_end(self, engine: Engine) -> None:
        if self._pending and not engine.should_terminate:
            self._pending = False
            self(engine)


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class TrainingReport:
    """Say what a training run did, in one log line and in a JSON file (``path``): the epochs and
    iterations it ran (and whether it was stopped early), its last loss, the metrics of its last
    validation, the best score and whether ``model.pt`` was replaced. A run that trained nothing
    (a resumed run already at its last epoch) says so as a warning. MONAI Label shows the line
    in a training request's status (``GET /train/``); the file keeps the keys of MONAI Label's
    own ``train_stats`` (``epoch``, ``start_ts``, ``total_time``, ``best_metric``, ``eval``)
    beside ours.

    Args:
        path: the JSON file, written atomically (under DDP by rank 0).
        evaluator: the validation engine.
        best_model: the :class:`BestModelSaver` of ``model.pt``.
        output_transform: the loss from the trainer's output.
    """

    def __init__(
        self,
        path: str,
        evaluator: Engine,
        best_model: BestModelSaver,
        output_transform: Callable[[Any], Any],
    ) -> None:
        self.path = Path(path)
        self.evaluator = evaluator
        self.best_model = best_model
        self.output_transform = output_transform

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)

    def _started(self, engine: Engine) -> None:
        """After any resume (loaded on STARTED by handlers attached earlier); the report itself
        is registered now, so that it comes after every other end-of-run handler."""
        self._start = time.time()
        self._first_epoch, self._first_iteration = engine.state.epoch, engine.state.iteration
        self._best_before = self.best_model.best
        if not engine.has_event_handler(self.report, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self.report)

    def stats(self, engine: Engine) -> dict[str, Any]:
        state, evaluated = engine.state, self.evaluator.state
        output = state.output
        validated = bool(evaluated.metrics)
        return {
            "epoch": state.epoch,
            "epochs_run": state.epoch - self._first_epoch,
            "iterations_run": state.iteration - self._first_iteration,
            "start_ts": int(self._start),
            "total_time": round(time.time() - self._start, 1),
            "train_loss": None if output is None else _number(self.output_transform(output)),
            "best_metric": self.best_model.best,
            "model_updated": self.best_model.best != self._best_before,
            "stopped_early": bool(engine.should_terminate),  # time limit, NaN loss
            "eval": {
                "metrics": {k: _number(v) for k, v in evaluated.metrics.items()},
                "key_metric_name": evaluated.key_metric_name,
                "best_metric": _number(evaluated.best_metric),
                "best_metric_epoch": evaluated.best_metric_epoch,
            }
            if validated
            else None,
        }

    def report(self, engine: Engine) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        stats = self.stats(engine)
        write_text(self.path, json.dumps(stats, indent=2))
        if stats["epochs_run"] == 0:
            logger.warning(
                f"trained nothing: the run was already at epoch {stats['epoch']} of "
                f"{engine.state.max_epochs} (raise the epochs to continue it); {self.path}"
            )
            return
        loss = stats["train_loss"]
        parts = [
            f"trained epochs {self._first_epoch + 1}-{stats['epoch']} "
            f"({stats['iterations_run']} iterations, {stats['total_time']:.0f} s"
            + (", stopped early)" if stats["stopped_early"] else ")")
            + ("" if loss is None else f", last loss {loss:.4g}")
        ]
        if stats["eval"] is None:
            parts.append("not validated")
        else:
            metrics = [f"{k} {v:.4g}" for k, v in stats["eval"]["metrics"].items() if v is not None]
            parts.append("validation: " + ", ".join(metrics))
        best = self.best_model.best
        saved = "replaced" if stats["model_updated"] else "kept"
        parts.append(
            f"{self.best_model.path.name} {saved}" + ("" if best is None else f" (best {best:.4g})")
        )
        logger.info(f"training report: {'; '.join(parts)}; {self.path}")


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
