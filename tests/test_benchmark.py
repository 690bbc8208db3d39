"""The speed benchmark (scripts/benchmark.py) through its command line, with a tiny untrained
network on a small synthetic case: it runs (a) and (b), and its Dice gap on the reference's
slices is the mean of the slice-by-slice gaps it lists, with their standard error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bundle.data.layouts import find_cases
from tests.bundle_cli import TINY_DIFFUSION_NET, TINY_INFERENCE, run_script


@pytest.mark.slow
def test_benchmark_reports_the_gap_on_each_reference_slice(small_datasets, tmp_path):
    case = find_cases(small_datasets["brats2020"])[0]
    report = tmp_path / "benchmark.md"
    overrides = [f"--{k}={v}" for k, v in {**TINY_DIFFUSION_NET, **TINY_INFERENCE}.items()]
    result = run_script(
        "benchmark", "--case_dir", Path(case["label"]).parent, "--ckpt_path", "None",
        "--reference_slices", 3, "--repeats", 1, "--num_samples", 2,
        "--network_options", "false", "--output", report, *overrides,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    text = report.read_text()
    r = json.loads(text.split("```json\n")[1].split("\n```")[0])
    ref = r["reference"]
    assert len(ref["slices"]) == len(ref["dice_each_slice"]) == 3
    assert ref["timed_slice_samples"] == 3 * 2  # every ensemble member of every slice
    gaps = np.array(r["dice_each_reference_slice_ours"]) - np.array(ref["dice_each_slice"])
    assert r["dice_gap_reference_slices"] == pytest.approx(gaps.mean())
    assert r["dice_gap_standard_error"] == pytest.approx(gaps.std(ddof=1) / np.sqrt(3))
    assert r["speedup"] > 1 and set(r["variants"]) >= {"default", "float32 (amp false)"}
    assert f"3 slices: z {ref['slices'][0]} " in text
