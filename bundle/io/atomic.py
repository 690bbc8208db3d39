"""Writing files so that a killed run leaves the old file or the new one, never half of one.

Every file is written to a hidden temporary name beside it, ``.tmp-<pid>-<name>`` (the name's
extension kept, so nibabel still compresses ``.nii.gz`` and pynrrd still writes ``.seg.nrrd``),
and renamed into place when complete.
A SIGKILL during a write can only leave such a hidden file; the next run over the folder removes
those whose writing process is gone (:func:`remove_stale_temporaries`). A write that fails
because the disk is full says so, naming the folder (:class:`DiskFull`). Runs that share a
folder take turns per piece of work through lock files (:func:`exclusive`).
"""

from __future__ import annotations

import csv
import errno
import fcntl
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bundle.data.layouts import DatasetError

logger = logging.getLogger(__name__)

_TEMPORARY = re.compile(r"\.tmp-(\d+)-.+")


FULL_BELOW_BYTES = 1 << 20
"""A folder with less free space than this when a write fails is taken to be full: torch.save
reports a full disk as a RuntimeError of its zip writer, without the OS's ENOSPC."""

LOCK_PREFIX = ".lock-"


class DiskFull(DatasetError):
    """A write failed because the disk holding the folder is full; the message names it."""


def _disk_full(err: BaseException, folder: Path) -> bool:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    try:
        return shutil.disk_usage(folder).free < FULL_BELOW_BYTES
    except OSError:
        return False


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield the temporary path to write ``path`` through; on success it is renamed to ``path``,
    on any failure removed (a full disk raises :class:`DiskFull`, naming the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as err:
        full = _disk_full(err, path.parent)  # judged before the temporary frees its space
        tmp.unlink(missing_ok=True)
        if full:
            raise DiskFull(f"no space left on {path.parent} (writing {path.name})") from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """``text`` into ``path`` (its folders made), complete or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def publish(report: str, output: str | Path | None = None) -> None:
    """Print a script's ``report`` and, when ``output`` names a file, write it there
    (:func:`write_text`)."""
    print(report)
    if output:
        write_text(output, report)


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """Rows as CSV into ``path`` (its folders made), complete or not at all; the columns are
    every row's keys in the order they first appear."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


@contextmanager
def exclusive(path: str | Path) -> Iterator[int | None]:
    """Hold the lock file ``path`` while the block runs: yields None when this process holds
    it, else the id of the process that does (the block should then leave the work alone).

    An advisory ``flock`` on the file, so a lock dies with its process (a killed run's lock
    never blocks the next run); the file holds the owner's pid, for the message, and is deleted
    on release. A lock taken on a file that another process deleted meanwhile is retaken.
    """
    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            yield int(owner) if owner.isdigit() else -1
            return
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file was released and deleted between our open and our lock
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield None
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _unlocked(path: Path) -> bool:
    """Whether no process holds the lock file ``path`` (its holder died, if it had one)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary and lock files that killed runs left in ``folder`` (a running
    writer's are kept); return them."""
    folder = Path(folder)
    stale = [
        path
        for path in (sorted(folder.iterdir()) if folder.is_dir() else [])
        if ((match := _TEMPORARY.fullmatch(path.name)) and not _alive(int(match.group(1))))
        or (path.name.startswith(LOCK_PREFIX) and _unlocked(path))
    ]
    for path in stale:
        path.unlink(missing_ok=True)
        logger.info(f"removed {path}, left by a killed run")
    return stale
