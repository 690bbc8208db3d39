"""Writing files so that a killed run leaves the old file or the new one, never half of one.

Every file is written to a hidden temporary name beside it, ``.tmp-<pid>-<name>`` (the name's
extension kept, so nibabel still compresses ``.nii.gz`` and pynrrd still writes ``.seg.nrrd``),
and renamed into place when complete.
A SIGKILL during a write can only leave such a hidden file; the next run over the folder removes
those whose writing process is gone (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

_TEMPORARY = re.compile(r"\.tmp-(\d+)-.+")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield the temporary path to write ``path`` through; on success it is renamed to ``path``,
    on any failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that killed runs left in ``folder`` (a running writer's are
    kept); return them."""
    folder = Path(folder)
    stale = [
        path
        for path in (sorted(folder.iterdir()) if folder.is_dir() else [])
        if (match := _TEMPORARY.fullmatch(path.name)) and not _alive(int(match.group(1)))
    ]
    for path in stale:
        path.unlink(missing_ok=True)
        logger.info(f"removed {path}, left by a killed run")
    return stale
