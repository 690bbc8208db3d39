"""Writing files so that a killed run leaves the old file or the new one, never half of one.

Every file is written to a hidden temporary name beside it, ``.tmp-<pid>-<name>`` (the name's
extension kept, so nibabel still compresses ``.nii.gz`` and pynrrd still writes ``.seg.nrrd``),
and renamed into place when complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
