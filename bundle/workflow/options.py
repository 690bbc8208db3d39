"""Command-line values as the configs need them, and one line (not a traceback) when they are bad.

Two kinds of command lines reach the bundle: ``python -m monai.bundle run ...``, whose
``--key value`` pairs override config keys (:func:`check_command_line`), and the scripts under
``scripts/``, ``fire`` command lines of one function each (:func:`run_cli`). Both check every
option typed before any work: an unknown name is an error naming the nearest valid one (a
misspelled option would otherwise be ignored, or added to the config as a key nothing reads),
and a value the bundle cannot use (``--num_samples abc``, ``--device cuda`` without a GPU) is an
error naming the option. The values written in the config files of a ``monai.bundle run``
(a user's overlay) are checked the same way, the error naming the file.
"""

from __future__ import annotations

import difflib
import errno
import functools
import inspect
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from pydoc import locate
from types import FrameType, TracebackType
from typing import Any

import fire
import torch
from monai.bundle import ConfigComponent, ConfigParser, ConfigWorkflow
from monai.bundle.scripts import create_workflow
from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS
from monai.utils import ensure_tuple

from bundle.data.layouts import SPLITS, DatasetError
from bundle.data.regions import region_names
from bundle.diffusion.process import PREDICTION_TYPES
from bundle.diffusion.samplers import SAMPLERS
from bundle.diffusion.training import LOSS_WEIGHTINGS

TRUE = {"true", "yes", "on", "1"}
FALSE = {"false", "no", "off", "0"}


class OptionError(DatasetError):
    """An option with a name or value the bundle cannot use; the message names the option."""


def flag(value: bool | str | int | None, name: str = "switch") -> bool:
    """A boolean switch from a config or the command line: true/false, yes/no, on/off, 1/0.

    ``fire`` passes ``--save_samples true`` through as the string "true" (only ``True`` is a
    Python literal), and a non-empty string is truthy, so "false" would switch a plain
    ``bool(...)`` on: spell the words out instead, and refuse anything else (``2``, "maybe").
    ``None`` (a YAML ``null``) is off.
    """
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
        return value.strip().lower() in TRUE
    raise OptionError(f"--{name} must be true or false (or yes/no, 1/0), got {value!r}")


def started_by_monailabel() -> bool:
    """Whether MONAI Label runs this training: its BundleTrainTask runs the bundle's ``run`` in
    a Python process that imported ``monailabel`` (its training subprocess, or the caller's own
    process), and passes no setting the config could read instead. (Its multi-GPU route starts
    ``torchrun`` on a config it writes; there the command-line default applies.)"""
    return "monailabel" in sys.modules


def whole(minimum: int) -> Callable[[Any, str], int]:
    """A check of whole numbers >= ``minimum`` (``3.0`` counts; ``3.5`` and "abc" do not)."""

    def check(value: Any, name: str) -> int:
        real = isinstance(value, int | float) and not isinstance(value, bool)
        if not real or value != int(value) or value < minimum:
            raise OptionError(f"--{name} must be a whole number >= {minimum}, got {value!r}")
        return int(value)

    return check


def number(low: float, high: float | None = None, high_included: bool = True) -> Callable:
    """A check of real numbers in ``[low, high]`` (``[low, high)`` without ``high_included``;
    no upper bound when ``high`` is None)."""
    wanted = f"a number >= {low}"
    if high is not None:
        wanted = f"a number in [{low}, {high}{']' if high_included else ')'}"

    def check(value: Any, name: str) -> float:
        real = isinstance(value, int | float) and not isinstance(value, bool)
        inside = real and value >= low
        if inside and high is not None:
            inside = value <= high if high_included else value < high
        if not inside:
            raise OptionError(f"--{name} must be {wanted}, got {value!r}")
        return float(value)

    return check


def each(check: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    """``check`` of one value, or of every value of a list (a script's setting per folder)."""

    def check_each(value: Any, name: str) -> Any:
        if isinstance(value, list | tuple):
            return [check(v, name) for v in value]
        return check(value, name)

    return check_each


def choice(values: Collection[str]) -> Callable[[Any, str], str]:
    """A check of one of ``values`` (a dict's keys as they are when the check runs: a sampler
    registered later counts)."""

    def check(value: Any, name: str) -> str:
        if value not in values:
            raise OptionError(
                f"--{name} must be one of {', '.join(values)}, got {value!r}"
                + _nearest(str(value), values, "")
            )
        return value

    return check


def regions(value: Any, name: str) -> Any:
    """A ``regions`` setting that :func:`bundle.data.regions.region_names` knows."""
    try:
        region_names(value)
    except (ValueError, TypeError) as err:
        raise OptionError(f"--{name}: {err}") from err
    return value


def device(value: Any, name: str) -> torch.device:
    """A device this machine has: ``cuda`` only with a visible GPU (else the run would stop at
    the first tensor moved there, with a CUDA traceback)."""
    try:
        found = torch.device(value)
    except (RuntimeError, TypeError) as err:
        raise OptionError(f"--{name} must be cpu, cuda or cuda:N, got {value!r}") from err
    if found.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (found.index or 0) >= count:
            raise OptionError(f"--{name} {value}: this machine has no such CUDA GPU; use cpu")
    return found


SWITCHES: tuple[str, ...] = (
    "learn_sigma",
    "validate_voxels",
    "amp",
    "ema",
    "augment",
    "save_samples",
    "quicklook",
    "overwrite",
    "mc_dropout",
    "read_data",
)
"""The boolean keys of the configs and scripts; each is read with :func:`flag`."""

COUNTS = ("num_samples", "sampling_steps", "val_num_samples", "val_sampling_steps", "epochs")
SIZES = (
    "context_step",
    "batch_size",
    "cpu_batch_size",
    "cpu_workers",
    "val_interval",
    "slices_per_volume",
    "val_slices_per_volume",
    "num_folds",
)

CHECKS: dict[str, Callable[[Any, str], Any]] = {
    **dict.fromkeys(SWITCHES, flag),
    **dict.fromkeys((*COUNTS, *SIZES, "num_train_timesteps", "warmup_iterations"), whole(1)),
    **dict.fromkeys(
        (
            "fold",
            "seed",
            "num_workers",
            "checkpoint_interval",
            "slice_box_multiple",
            "context_slices",
        ),
        whole(0),
    ),
    **dict.fromkeys(("image_size", "in_plane_spacing", "memory_budget_mb"), number(1e-6)),
    **dict.fromkeys(
        ("learning_rate", "max_train_seconds", "review_threshold", "mask_dice_weight"), number(0.0)
    ),
    "ema_decay": number(0.0, 1.0, high_included=False),
    "sampling_eta": number(0.0, 1.0),
    "min_component_fraction": number(0.0, 1.0),
    "segmentation_threshold": each(number(0.0, 1.0, high_included=False)),
    "test_fraction": number(0.0, 1.0, high_included=False),
    "split": choice(("all", *SPLITS)),
    "sampler": choice(SAMPLERS),
    "val_sampler": choice(SAMPLERS),
    "prediction_type": choice(PREDICTION_TYPES),
    "loss_weighting": choice(LOSS_WEIGHTINGS),
    "regions": regions,
    "device": device,
}
"""What a value of an option must be, by option name; the command line's values and those
written in the config files are checked before any work."""


def check_value(name: str, value: Any) -> Any:
    """``value`` checked (and converted: "true" -> True) if ``name`` is an option with a check."""
    return CHECKS[name](value, name) if name in CHECKS else value


def _nearest(name: str, valid: Sequence[str], prefix: str = "--") -> str:
    """ "; did you mean --x?" for the valid name closest to ``name``, if one is close."""
    close = difflib.get_close_matches(name, [str(v) for v in valid], n=1, cutoff=0.6)
    return f"; did you mean {prefix}{close[0]}?" if close else ""


def unknown_option(name: str, valid: Sequence[str], where: str) -> OptionError:
    """The error for an option not in ``valid``, saying ``where`` it was looked for and naming
    the nearest valid one."""
    return OptionError(f"unknown option --{name} ({where}){_nearest(name, valid)}")


# --- python -m monai.bundle run -----------------------------------------------------------------


def _workflow_call() -> tuple[Any, dict[str, Any]] | None:
    """The config files and arguments of the ``monai.bundle`` run being initialised.

    ``monai.bundle.run`` (the command line's ``run``, and ``scripts/segment.py``) builds its
    workflow in ``monai.bundle.scripts.create_workflow``, which initialises it while its locals
    ``config_file`` and ``_args`` (the run's arguments, overrides included) are alive. MONAI
    passes the overrides on to its parser and keeps no list of them, so this frame is where
    they are found; a workflow built some other way (MONAI Label's) has none, and is not checked.
    """
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code is not create_workflow.__code__:
        frame = frame.f_back
    if frame is None or "_args" not in frame.f_locals:
        return None
    return frame.f_locals.get("config_file"), dict(frame.f_locals["_args"])


def _run_arguments() -> set[str]:
    """Arguments of ``monai.bundle run`` that are not config overrides (MLflow's settings
    become config keys only when ``--tracking`` patches them in)."""
    names = set(inspect.signature(ConfigWorkflow.__init__).parameters) - {"self", "override"}
    tracking = {key for kind in DEFAULT_EXP_MGMT_SETTINGS.values() for key in kind["configs"]}
    return names | {"args_file", "workflow_name"} | tracking


def _target_accepts(component: dict, name: str) -> bool:
    """Whether the class or function a config component instantiates takes argument ``name``."""
    target = component.get("_target_")
    if not isinstance(target, str) or target.startswith("$"):
        return False
    found = locate(ConfigComponent({"_target_": target}).resolve_module_name())
    try:
        parameters = inspect.signature(found).parameters if callable(found) else {}
    except (TypeError, ValueError):  # builtins without a signature
        return False
    kinds = (p.kind for p in parameters.values())
    return name in parameters or inspect.Parameter.VAR_KEYWORD in kinds


def _config_has(parser: Any, key: str) -> bool:
    """Whether the config has ``key`` (``a#b`` or ``a::b`` for nested ones), or ``key`` is a
    new argument of a component it has (``--network_def#dropout 0.1``)."""
    if key in parser:
        return True
    parent, _, last = key.replace("::", "#").rpartition("#")
    return (
        bool(parent)
        and parent in parser
        and isinstance(parser[parent], dict)
        and _target_accepts(parser[parent], last)
    )


def _keys_near(parser: Any, key: str) -> list[str]:
    """The config's top-level keys, and the keys beside a nested ``key`` (``a#b``)."""
    parent = key.replace("::", "#").rpartition("#")[0]
    keys = list(parser.config)
    if parent in parser and isinstance(parser[parent], dict):
        keys += [f"{parent}#{child}" for child in parser[parent]]
    return keys


def check_command_line() -> None:
    """Refuse overrides that name no config key, and bad values of known options, typed or
    written in a config file (a user's overlay), with one line (:class:`OptionError`); the
    configs call it first thing in ``initialize``."""
    call = _workflow_call()
    if call is None:
        return
    config_file, arguments = call
    parser = ConfigParser()
    parser.read_config(config_file)
    skip = _run_arguments()
    for key, value in arguments.items():
        if key in skip:
            continue
        if not _config_has(parser, key):
            raise unknown_option(key, _keys_near(parser, key), "no such key in the config")
        check_value(key, value)
    for path in ensure_tuple(config_file):
        for key, value in ConfigParser.load_config_file(path).items():
            if key not in arguments and not _is_expression(value):
                _check_file_value(path, key, value)


def _is_expression(value: Any) -> bool:
    """A config value that MONAI evaluates or looks up (``$...``, ``@...``, ``%...``), which
    has no value to check before the config is parsed."""
    return isinstance(value, str) and value.startswith(("$", "@", "%"))


def _check_file_value(path: str, key: str, value: Any) -> None:
    """:func:`check_value` for a value written in config file ``path``, the error naming the
    file and the key."""
    try:
        check_value(key, value)
    except OptionError as err:
        message = str(err).removeprefix("--")
        raise OptionError(f"config file {path}: {message}") from err


def make_folder(path: str | Path, name: str) -> Path:
    """Create an output folder (``--output_dir``, ``--ckpt_dir``), or one line if it is a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OptionError(f"--{name} {path} is a file, not a folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- one line instead of a traceback -------------------------------------------------------------


def _chain(err: BaseException | None) -> Iterator[BaseException]:
    """An exception and those it was raised from (MONAI's config machinery wraps errors in two
    RuntimeErrors of its own)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def one_line_message(err: BaseException) -> str | None:
    """What to print for an error that is the input's or the machine's, not the bundle's: a
    DatasetError's message, or an OS error about a file ("no space left on <path>"); None for
    any other error, which keeps its traceback."""
    for found in _chain(err):
        if isinstance(found, DatasetError):
            return str(found)
    for found in _chain(err):
        if isinstance(found, OSError) and found.errno == errno.ENOSPC:
            return f"no space left on {found.filename or 'the output disk'}"
        if isinstance(found, OSError) and found.filename:
            return f"{found.strerror}: {found.filename}"
    return None


def report_error(message: str) -> None:
    """Bad input's one line on stderr, naming the case and file: no traceback."""
    print(f"error: {message}", file=sys.stderr, flush=True)


def one_line_errors() -> None:
    """Make a ``monai.bundle run`` that stops on bad input print its one line (``error: ...``,
    exit code 1) instead of a traceback through the config machinery; other exceptions keep
    their traceback. The configs call it first thing in ``initialize``."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], err: BaseException, traceback: TracebackType | None):
        message = one_line_message(err)
        if message is None:
            previous(kind, err, traceback)
        else:
            report_error(message)

    sys.excepthook = hook


# --- scripts -------------------------------------------------------------------------------------


def _typed_options(argv: Sequence[str]) -> Iterator[str]:
    """The option names of a ``fire`` command line (``--name value``, ``--name=value``), up to
    a bare ``--`` (after which fire's own flags follow)."""
    for word in argv:
        if word == "--":
            return
        if word.startswith("--") and len(word) > 2:
            yield word[2:].split("=", 1)[0].replace("-", "_")


def check_script_options(component: Callable, argv: Sequence[str], script: str) -> None:
    """Refuse an option that a script's function has no parameter for, naming the nearest one
    (a function taking ``**overrides`` passes the others on, to be checked there)."""
    parameters = inspect.signature(component).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    valid = [*parameters, "help"]
    for name in _typed_options(argv):
        if name not in valid and not (name.startswith("no") and name[2:] in parameters):
            raise unknown_option(name, valid, f"{script} has no such option")


def checked(component: Callable) -> Callable:
    """``component`` with the values typed for its options checked first (:data:`CHECKS`),
    those of ``**overrides`` included."""
    signature = inspect.signature(component)

    @functools.wraps(component)
    def call(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        for name, value in bound.arguments.items():
            if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                bound.arguments[name] = {k: check_value(k, v) for k, v in value.items()}
            else:
                bound.arguments[name] = check_value(name, value)
        return component(*bound.args, **bound.kwargs)

    return call


def run_cli(component: Callable | dict[str, Callable]) -> None:
    """Run a script's function (or one of a dict of them, named first) as a ``fire`` command.

    Its options are checked first (unknown names, bad values); return values are not echoed
    (they are for Python callers); bad input ends the command with its one line (see
    :func:`one_line_message`) and exit code 2, not a traceback.
    """
    script, argv = Path(sys.argv[0]).name, sys.argv[1:]
    try:
        if isinstance(component, dict):
            if argv and argv[0] in component:
                check_script_options(component[argv[0]], argv[1:], f"{script} {argv[0]}")
            fire.Fire({name: checked(c) for name, c in component.items()}, serialize=lambda _: None)
            return
        check_script_options(component, argv, script)
        fire.Fire(checked(component), serialize=lambda _: None)
    except Exception as err:
        message = one_line_message(err)
        if message is None:
            raise
        report_error(message)
        sys.exit(2)
