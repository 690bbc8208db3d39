"""Run the bundle's workflows the way users do: `python -m monai.bundle run ...` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

TINY_DIFFUSION_NET = {
    "network_def#channels": "[8,16]",
    "network_def#attention_levels": "[False,True]",
    "network_def#num_head_channels": "8",
    "network_def#norm_num_groups": "8",
}
"""Overrides that shrink the diffusion U-Net to a few thousand parameters for tests."""


def bundle_run(
    workflow: str,
    config_files: list[str],
    overrides: dict[str, object],
    launcher: list[str] | None = None,
    timeout: int = 600,
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run <workflow>`` with ``--key value`` overrides; output captured."""
    files = "[" + ",".join(f"'{REPO / 'configs' / f}'" for f in config_files) + "]"
    command = [*(launcher or [sys.executable]), "-m", "monai.bundle", "run", workflow]
    command += ["--config_file", files, "--bundle_root", str(REPO)]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def train_overrides(dataset: Path, ckpt_dir: Path, **extra: object) -> dict[str, object]:
    """A tiny, fast training on the small test cases."""
    overrides: dict[str, object] = {
        "dataset_dir": dataset,
        "ckpt_dir": ckpt_dir,
        "output_dir": ckpt_dir / "runs",
        "image_size": 64,
        "in_plane_spacing": 2.0,
        "num_folds": 2,
        "test_fraction": 0,
        "slices_per_volume": 4,
        "batch_size": 4,
        "val_slices_per_volume": 2,
        "val_num_samples": 2,
        "val_sampling_steps": 2,
        **TINY_DIFFUSION_NET,
    }
    overrides.update(extra)
    return overrides
