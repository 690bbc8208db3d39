"""Run the bundle's workflows the way users do: `python -m monai.bundle run ...` in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from bundle.workflow.configs import load_config
from tests.conftest import REPO

TINY_DIFFUSION_NET = {
    "network_def#channels": "[8,16]",
    "network_def#attention_levels": "[False,True]",
    "network_def#num_head_channels": "8",
    "network_def#norm_num_groups": "8",
}
"""Overrides that shrink the diffusion U-Net to a few thousand parameters for tests."""

TINY_INFERENCE = {"image_size": 64, "in_plane_spacing": 2.0, "prediction_type": "epsilon"}
"""The settings test inference runs with (and the tiny weights' stored settings say)."""


def bundle_command(
    workflow: str,
    config_files: list[str],
    overrides: dict[str, object],
    launcher: list[str] | None = None,
) -> list[str]:
    """``python -m monai.bundle run <workflow>`` with ``--key value`` overrides."""
    files = "[" + ",".join(f"'{REPO / 'configs' / f}'" for f in config_files) + "]"
    command = [*(launcher or [sys.executable]), "-m", "monai.bundle", "run", workflow]
    command += ["--config_file", files, "--bundle_root", str(REPO)]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    return command


BUNDLE_ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
"""The environment bundle commands run in (run them with ``cwd=REPO``)."""


def bundle_run(
    workflow: str,
    config_files: list[str],
    overrides: dict[str, object],
    launcher: list[str] | None = None,
    timeout: int = 600,
) -> subprocess.CompletedProcess:
    """Run :func:`bundle_command` to the end, output captured."""
    return subprocess.run(
        bundle_command(workflow, config_files, overrides, launcher),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=BUNDLE_ENV,
    )


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def assert_one_line_error(
    result: subprocess.CompletedProcess, *fragments: str, returncode: int = 1
) -> str:
    """A failed run (``monai.bundle run``: code 1, scripts: 2) whose only complaint is one
    ``error:`` line holding ``fragments``, and no traceback."""
    log = result.stdout + result.stderr
    assert result.returncode == returncode, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    for fragment in fragments:
        assert fragment in line, line
    return line


def run_script(script: str, *args: object, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m scripts.<script> <args>`` from the bundle root, as users run it, output
    captured."""
    return subprocess.run(
        [sys.executable, "-m", f"scripts.{script}", *(str(a) for a in args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=BUNDLE_ENV,
    )


def copy_cases(source: Path, dataset: Path, copies: int = 1) -> list[str]:
    """Copy a BraTS 2020 folder's cases ``copies`` times into ``dataset`` (``<case>_<k>``, files
    renamed to match); returns the new case ids, sorted."""
    for k in range(copies):
        for case_dir in sorted(p for p in source.iterdir() if p.is_dir()):
            copy = dataset / f"{case_dir.name}_{k}"
            shutil.copytree(case_dir, copy)
            for path in copy.iterdir():
                path.rename(path.with_name(path.name.replace(case_dir.name, copy.name)))
    return sorted(p.name for p in dataset.iterdir() if p.is_dir())


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


def tiny_weights(
    path: Path, regions: str = "wt", with_settings: bool = False, **extra: object
) -> Path:
    """Random weights of the tiny test network, built from inference.yaml itself: a bare state
    dict, or ``with_settings`` as training writes them, with the settings of
    :data:`TINY_INFERENCE` and ``extra``."""
    # the same literals the command line gets
    tiny = {key: eval(value) for key, value in TINY_DIFFUSION_NET.items()}
    settings = {**tiny, **TINY_INFERENCE, "regions": regions, **extra}
    parser = load_config("inference.yaml", settings)
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    if with_settings:
        settings = parser.get_parsed_content("weight_settings").state_dict()
        torch.save({"model": network.state_dict(), "settings": settings}, path)
    else:
        torch.save(network.state_dict(), path)
    return path


def inference_overrides(case: Path, out: Path, weights: Path, **extra: object) -> dict:
    """Inference of the tiny network on a case or folder, a few samples and steps."""
    return {
        "dataset_dir": case,
        "output_dir": out,
        "ckpt_path": weights,
        "num_samples": 4,
        "sampling_steps": 3,
        # a random network read as a noise predictor draws varied masks (as x0 it draws ~0.5)
        **TINY_INFERENCE,
        **TINY_DIFFUSION_NET,
        **extra,
    }


def infer(case: Path, out: Path, weights: Path, **extra: object) -> subprocess.CompletedProcess:
    """``monai.bundle run inference`` with :func:`inference_overrides`."""
    return bundle_run(
        "inference", ["inference.yaml"], inference_overrides(case, out, weights, **extra)
    )
