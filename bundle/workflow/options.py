"""Command-line values as the configs need them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType

import fire

from bundle.data.layouts import DatasetError

TRUE = {"true", "yes", "on", "1"}
FALSE = {"false", "no", "off", "0", "none", ""}


def flag(value: bool | str | int | None) -> bool:
    """A boolean switch from a config or the command line.

    ``fire`` passes ``--save_samples true`` through as the string "true" (only ``True`` is a
    Python literal), and a non-empty string is truthy, so "false" would switch a plain
    ``bool(...)`` on: spell the words out instead, and refuse anything else.
    """
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE | FALSE:
            return word in TRUE
        raise ValueError(f"expected a boolean (true/false), got {value!r}")
    return bool(value)


def started_by_monailabel() -> bool:
    """Whether MONAI Label runs this training: its BundleTrainTask runs the bundle's ``run`` in
    a Python process that imported ``monailabel`` (its training subprocess, or the caller's own
    process), and passes no setting the config could read instead. (Its multi-GPU route starts
    ``torchrun`` on a config it writes; there the command-line default applies.)"""
    return "monailabel" in sys.modules


def dataset_error(err: BaseException | None) -> DatasetError | None:
    """The DatasetError an exception is, or was raised from (MONAI's config machinery wraps
    errors in two RuntimeErrors of its own)."""
    while err is not None and not isinstance(err, DatasetError):
        err = err.__cause__ or err.__context__
    return err


def report_error(err: DatasetError) -> None:
    """Bad input's one line on stderr, naming the case and file: no traceback."""
    print(f"error: {err}", file=sys.stderr, flush=True)


def one_line_errors() -> None:
    """Make a ``monai.bundle run`` that stops on bad input print its one line (``error: ...``,
    exit code 1) instead of a traceback through the config machinery; other exceptions keep
    their traceback. The configs call it first thing in ``initialize``."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], err: BaseException, traceback: TracebackType | None):
        found = dataset_error(err)
        if found is None:
            previous(kind, err, traceback)
        else:
            report_error(found)

    sys.excepthook = hook


def run_cli(component: Callable) -> None:
    """Run a script's function as a ``fire`` command line.

    Return values are not echoed (they are for Python callers), and a bad dataset ends the
    command with its one-line message naming the case and file, and exit code 2, not a traceback.
    """
    try:
        fire.Fire(component, serialize=lambda _: None)
    except DatasetError as err:
        report_error(err)
        sys.exit(2)
