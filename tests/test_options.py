"""Options typed on the command line mean what they say: boolean switches, misspelled keys and
bad values (one line naming the option, never a traceback), through `monai.bundle run` and the
scripts."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import nibabel as nib
import numpy as np
import pytest

from bundle.data.layouts import DatasetError, find_cases
from bundle.data.validation import validate_case
from bundle.workflow.configs import load_config
from bundle.workflow.options import OptionError, flag
from tests.bundle_cli import (
    assert_ok,
    assert_one_line_error,
    bundle_run,
    infer,
    inference_overrides,
    run_script,
    tiny_weights,
)

TRUE_WORDS = ("true", "True", "yes", "on", "1")
FALSE_WORDS = ("false", "False", "no", "off", "0")


@pytest.mark.parametrize("value", [True, 1, 1.0, *TRUE_WORDS])
def test_true_words(value):
    assert flag(value) is True


@pytest.mark.parametrize("value", [False, 0, None, *FALSE_WORDS])
def test_false_words(value):
    assert flag(value) is False


@pytest.mark.parametrize("value", ["maybe", "", 2, -1, "none", 0.5])
def test_other_values_are_refused_naming_the_option(value):
    with pytest.raises(OptionError, match="--learn_sigma must be true or false"):
        flag(value, "learn_sigma")


# --- every boolean key of the configs reads "false" as false --------------------------------


SWITCH_READERS: list[tuple[str, list[str], str, Callable[[object], bool]]] = [
    ("learn_sigma", ["inference.yaml"], "network_def", lambda net: net.out_channels == 2),
    ("save_samples", ["inference.yaml"], "inferer", lambda inferer: inferer.return_samples),
    ("quicklook", ["inference.yaml"], "case_filter", lambda cases: "quicklook" in cases.outputs),
    ("overwrite", ["inference.yaml"], "case_filter", lambda cases: cases.overwrite),
    ("amp", ["inference.yaml"], "inferer", lambda inferer: inferer.amp),
    ("amp", ["train.yaml"], "train#trainer#amp", lambda amp: amp),
    ("ema", ["train.yaml"], "weight_average", lambda average: average.enabled),
    (
        "augment",
        ["train.yaml"],
        "train#preprocessing",
        lambda chain: any(type(t).__name__ == "RandFlipd" for t in chain.transforms),
    ),
    (
        "mc_dropout",
        ["inference.yaml", "baseline_unet_inference.yaml"],
        "inferer",
        lambda inferer: inferer.mc_dropout,
    ),
]
"""Per switch and config: the item that reads it, and whether that item has it on."""


@pytest.mark.parametrize(
    ("key", "files", "probe", "switched_on"),
    SWITCH_READERS,
    ids=[f"{key}-{files[-1]}" for key, files, *_ in SWITCH_READERS],
)
def test_every_switch_reads_the_words_of_the_command_line(key, files, probe, switched_on):
    for word, meaning in [*((w, True) for w in TRUE_WORDS), *((w, False) for w in FALSE_WORDS)]:
        parser = load_config(files, {key: word})
        assert switched_on(parser.get_parsed_content(probe)) is meaning, (key, word)


def test_validation_reads_every_voxel_only_when_asked(small_datasets, tmp_path):
    source = sorted(p for p in small_datasets["brats2020"].iterdir() if p.is_dir())[0]
    case = next(c for c in find_cases(small_datasets["brats2020"]) if c["case_id"] == source.name)
    t1 = nib.load(case["image"][0])
    data = np.asanyarray(t1.dataobj).astype(np.float32)
    data[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, t1.affine), str(tmp_path / "t1.nii.gz"))
    bad = dict(case, image=[str(tmp_path / "t1.nii.gz"), *case["image"][1:]])
    validate_case(bad, read_data="false")  # validate_voxels: false, headers only
    with pytest.raises(DatasetError, match="NaN"):
        validate_case(bad, read_data="yes")


# --- through the command lines ----------------------------------------------------------------

BAD_INFERENCE_OPTIONS = [
    ({"sampling_step": 2}, "unknown option --sampling_step", "did you mean --sampling_steps?"),
    ({"network_def#channel": "[8,16]"}, "unknown option --network_def#channel", "#channels?"),
    ({"sampling_steps": 0}, "--sampling_steps must be a whole number >= 1, got 0"),
    ({"num_samples": "abc"}, "--num_samples must be a whole number >= 1, got 'abc'"),
    ({"device": "cuda:99"}, "--device cuda:99: this machine has no such CUDA GPU"),
    ({"split": "bogus"}, "--split must be one of all, training, validation, testing"),
    ({"regions": "bogus"}, "--regions: unknown regions 'bogus'"),
    ({"learn_sigma": "maybe"}, "--learn_sigma must be true or false"),
    ({"slice_box_multiple": -8}, "--slice_box_multiple must be a whole number >= 0, got -8"),
    ({"review_threshold": "high"}, "--review_threshold must be a number >= 0.0, got 'high'"),
    ({"min_component_fraction": 2}, "--min_component_fraction must be a number in [0.0, 1.0]"),
    ({"segmentation_threshold": 1}, "--segmentation_threshold must be a number in [0.0, 1.0)"),
    ({"context_step": 0}, "--context_step must be a whole number >= 1, got 0"),
]
"""Typed overrides of `run inference` and what their one error line says."""


@pytest.mark.parametrize(("typed", "message"), [(t, m) for t, *m in BAD_INFERENCE_OPTIONS])
def test_bad_inference_options_are_one_line_naming_the_option(
    small_datasets, tmp_path, typed, message
):
    weights = tiny_weights(tmp_path / "model.pt")
    overrides = inference_overrides(small_datasets["brats2020"], tmp_path / "out", weights)
    result = bundle_run("inference", ["inference.yaml"], {**overrides, **typed})
    assert_one_line_error(result, *message)
    assert not list((tmp_path / "out").glob("*"))


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("sampler: bogus", "sampler must be one of "),
        ("memory_budget_mb: -1", "memory_budget_mb must be a number >= 1e-06, got -1"),
        ("amp: maybe", "amp must be true or false"),
    ],
)
def test_bad_values_in_a_config_file_are_one_line_naming_the_file(
    small_datasets, tmp_path, written, message
):
    """A user's overlay config is checked as the command line is, before any work; the typed
    value of a key wins over the file's and is what is checked."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(written + "\n")
    weights = tiny_weights(tmp_path / "model.pt")
    overrides = inference_overrides(small_datasets["brats2020"], tmp_path / "out", weights)
    result = bundle_run("inference", ["inference.yaml", str(overlay)], overrides)
    assert_one_line_error(result, f"config file {overlay}: {message}")
    assert not list((tmp_path / "out").glob("*"))
    key = written.split(":")[0]
    typed = {**overrides, key: load_config("inference.yaml").get(key)}
    assert_ok(bundle_run("inference", ["inference.yaml", str(overlay)], typed))


def test_an_output_path_that_is_a_file_is_one_line(small_datasets, tmp_path):
    a_file = tmp_path / "out"
    a_file.write_text("a file")
    weights = tiny_weights(tmp_path / "model.pt")
    result = infer(small_datasets["brats2020"], a_file, weights)
    assert_one_line_error(result, f"--output_dir {a_file} is a file, not a folder")


def test_misspelled_script_options_name_the_nearest_one(small_datasets, tmp_path):
    case = sorted(p for p in small_datasets["brats2020"].iterdir() if p.is_dir())[0]
    files = [f"--{m}={case / f'{case.name}_{m}.nii.gz'}" for m in ("t1", "t1ce", "t2", "flair")]
    result = run_script("segment", *files, f"--output_dir={tmp_path}", "--num_sample", 2)
    assert_one_line_error(result, "unknown option --num_sample", "--num_samples?", returncode=2)
    assert not list(tmp_path.glob("*.nii.gz"))
    result = run_script("datalist", "--dataset_dir", case.parent, "--num_fold", 2)
    assert_one_line_error(
        result, "unknown option --num_fold (datalist.py has no such option)", returncode=2
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--fold", 7], "--fold must be in [0, 5)"),
        (["--num_folds", "abc"], "--num_folds must be a whole number >= 1, got 'abc'"),
        (["--test_fraction", 1.5], "--test_fraction must be a number in [0.0, 1.0)"),
        (["--read_data", "maybe"], "--read_data must be true or false"),
        (["--test_fraction", 0.99], "the split has 0 training, 0 validation, 3 testing case(s)"),
    ],
)
def test_bad_datalist_arguments_are_one_line(small_datasets, tmp_path, arguments, message):
    output = tmp_path / "datalist.json"
    result = run_script(
        "datalist", "--dataset_dir", small_datasets["brats2020"], "--output", output, *arguments
    )
    assert_one_line_error(result, message, returncode=2)
    assert not output.exists()


def test_a_full_disk_is_one_line_naming_the_folder(small_datasets, tmp_path):
    """Inference into a 1 MB tmpfs with a few kB left (needs root to mount it)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - 8192))
        out = disk / "out"
        result = infer(small_datasets["brats2020"], out, tiny_weights(tmp_path / "model.pt"))
        assert_one_line_error(result, f"no space left on {out}")
        assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    finally:
        subprocess.run(["umount", str(disk)])
