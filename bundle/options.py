"""Command-line values as the configs need them."""

from __future__ import annotations

import sys
from collections.abc import Callable

import fire

from bundle.layouts import DatasetError

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


def run_cli(component: Callable) -> None:
    """Run a script's function as a ``fire`` command line.

    Return values are not echoed (they are for Python callers), and a bad dataset ends the
    command with its one-line message naming the case and file, and exit code 2, not a traceback.
    """
    try:
        fire.Fire(component, serialize=lambda _: None)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
