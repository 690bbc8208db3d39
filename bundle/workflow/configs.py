"""The bundle's configs read from Python, as ``python -m monai.bundle run`` reads them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from monai.bundle import ConfigParser

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
"""The bundle's root folder (``configs/``, ``models/``, ``scripts/``)."""

CONFIG_DIR = BUNDLE_ROOT / "configs"


def load_config(
    names: str | Sequence[str], overrides: Mapping[str, object] | None = None
) -> ConfigParser:
    """The configs ``names`` of ``configs/`` (later files win, as with ``--config_file "[...]"``)
    with ``--key value`` overrides applied (ids as on the command line: ``network_def#channels``).
    """
    parser = ConfigParser()
    files = [names] if isinstance(names, str) else list(names)
    parser.read_config([str(CONFIG_DIR / name) for name in files])
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser
