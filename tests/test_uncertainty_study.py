"""The uncertainty study (scripts/uncertainty_study.py) scores every setting on each side of the
split apart and picks the default by its stated rule from the validation cases only."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch

from bundle.ensemble.networks import NetworkEnsemble
from bundle.workflow.options import OptionError
from scripts.uncertainty_study import (
    choose,
    draw,
    held_out_slices,
    load_model,
    model_slices,
    stored_context,
)
from tests.bundle_cli import (
    BUNDLE_ENV,
    TINY_DIFFUSION_NET,
    TINY_INFERENCE,
    run_script,
    tiny_weights,
)
from tests.conftest import REPO


def entry(steps: int, dice: float, auroc: float, gain: float = 0.0) -> dict:
    return {"k": 5, "steps": steps, "dice": dice, "single_dice": dice - gain, "auroc": auroc}


def test_the_rule_takes_the_fewest_steps_close_to_the_best_dice_with_enough_auroc():
    summary = [entry(1, 0.90, 0.95), entry(2, 0.953, 0.85), entry(5, 0.955, 0.91)]
    summary += [entry(10, 0.956, 0.93), {**entry(1, 0.99, 0.99), "k": 1}]
    assert choose(summary)["steps"] == 5  # 2 steps lacks the AUROC, 1 step the Dice
    summary[2]["auroc"] = 0.80
    assert choose(summary)["steps"] == 10
    summary[3]["auroc"] = 0.70  # none reaches 0.90: the highest AUROC within the Dice margin
    assert choose(summary)["steps"] == 2


def test_without_enough_auroc_the_rule_breaks_auroc_ties_by_the_ensemble_gain():
    # the three-draw study of the shipped weights (docs/uncertainty.md): AUROCs within a draw's
    # noise are tied, and the larger gain over one sample wins, then fewer steps
    summary = [entry(3, 0.765, 0.892, 0.006), entry(4, 0.769, 0.888, 0.030)]
    summary.append(entry(5, 0.767, 0.888, 0.034))
    assert choose(summary)["steps"] == 5
    assert choose(summary, auroc_tie=0.0)["steps"] == 3  # no ties: the highest AUROC
    summary[2]["single_dice"] = 0.739
    assert choose(summary)["steps"] == 4  # now 4 gains more (+0.030 against +0.028)
    summary.append(entry(2, 0.768, 0.870, 0.040))  # more gain, but its AUROC is not tied
    assert choose(summary)["steps"] == 4
    same = [entry(7, 0.767, 0.888, 0.03), entry(6, 0.767, 0.888, 0.03)]
    assert choose(same)["steps"] == 6  # the same in everything: fewer steps


def study_inputs(small_datasets, tmp_path) -> tuple:
    """The small BraTS 2020 dataset, its case names, a split file (1 training, 1 validation case,
    the rest testing), tiny weights and the overrides that load them."""
    dataset = small_datasets["brats2020"]
    cases = sorted(p.name for p in dataset.iterdir() if p.is_dir())
    split = tmp_path / "split.json"
    split.write_text(
        json.dumps({"training": cases[:1], "validation": cases[1:2], "testing": cases[2:]})
    )
    weights = tiny_weights(tmp_path / "model.pt", with_settings=True)
    overrides = {**TINY_INFERENCE, **{k: eval(v) for k, v in TINY_DIFFUSION_NET.items()}}
    return dataset, cases, split, weights, overrides


@pytest.mark.slow
def test_study_scores_each_side_apart_and_chooses_on_validation(small_datasets, tmp_path):
    dataset, cases, split, weights, overrides = study_inputs(small_datasets, tmp_path)
    out = tmp_path / "study"
    command = [sys.executable, "-m", "scripts.uncertainty_study", "--dataset_dir", str(dataset)]
    command += ["--models", json.dumps({"tiny": str(weights)}), "--split_file", str(split)]
    command += ["--output", str(out), "--overrides", repr(overrides)]
    command += ["--steps", "[1,2]", "--etas", "[1.0]", "--num_samples", "3", "--sizes", "[1,3]"]
    command += ["--slice_stride", "6", "--ddpm_slices", "1"]  # one slice: still a slice axis
    command += ["--draws", "2", "--seed", "3"]
    result = subprocess.run(command, cwd=REPO, env=BUNDLE_ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]

    with open(out / "study.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["side"], r["case"]) for r in rows} == {
        ("validation", cases[1]),
        ("testing", cases[2]),
    }
    assert {(r["steps"], r["samples"], r["k"]) for r in rows} == {
        (steps, form, k)
        for steps in ("1", "2", "1000")
        for form in ("soft", "binary")
        for k in "123"
    }
    # one sample: its Dice alone is the ensemble's; more: the mean of its samples' Dice
    # two draws of every setting, seeded apart
    assert {(r["case"], r["seed"]) for r in rows} == {(c, s) for c in cases[1:3] for s in "34"}
    first, second = ([r for r in rows if r["seed"] == s and r["k"] == "3"] for s in "34")
    assert [r["ece"] for r in first] != [r["ece"] for r in second]
    assert all(r["single_dice"] == r["dice"] for r in rows if r["k"] == "1")
    assert all(0 <= float(r["single_dice"]) <= 1 for r in rows)
    binary = [r for r in rows if r["samples"] == "binary" and r["k"] == "1"]
    assert all(float(r["auroc"]) == 0.5 or r["auroc"] == "nan" for r in binary)  # no variance
    report = (out / "study.md").read_text()
    assert (
        "Chosen by the rule on the validation cases (2 draws of the samples averaged): tiny, ddim"
        in report
    )
    assert report.count("| testing | tiny | ddim |") == 8  # 2 steps x 2 forms x sizes 1, 3
    assert report.count("| testing | tiny | ddpm |") == 4
    for side in ("validation", "testing"):
        for figure in ("steps", "ensemble_size", "tradeoff"):
            assert (out / f"{side}_{figure}.png").stat().st_size > 1000


def test_a_list_of_checkpoints_is_one_seed_ensemble(tmp_path):
    overrides = {**TINY_INFERENCE, **{k: eval(v) for k, v in TINY_DIFFUSION_NET.items()}}
    first = tiny_weights(tmp_path / "a.pt", with_settings=True)
    second = torch.load(first, weights_only=True)
    second["model"] = {k: v + 1 for k, v in second["model"].items()}
    torch.save(second, tmp_path / "b.pt")
    ensemble, scheduler = load_model([str(first), str(tmp_path / "b.pt")], overrides)
    assert isinstance(ensemble, NetworkEnsemble) and len(ensemble) == 2 and not ensemble.training
    assert scheduler.prediction_type == "epsilon"
    for member, path in zip(ensemble, (first, tmp_path / "b.pt"), strict=True):
        stored = torch.load(path, weights_only=True)["model"]
        assert all(torch.equal(member.state_dict()[k], v) for k, v in stored.items())

    second["settings"]["scheduler"]["prediction_type"] = "sample"
    torch.save(second, tmp_path / "c.pt")
    with pytest.raises(OptionError, match="predict different things"):
        load_model([str(first), str(tmp_path / "c.pt")], overrides)


def test_a_network_trained_on_neighbouring_slices_gets_them_in_the_study(small_datasets, tmp_path):
    dataset, cases, split, flat, overrides = study_inputs(small_datasets, tmp_path)
    context = tiny_weights(tmp_path / "context.pt", with_settings=True, context_slices=1)
    assert stored_context(str(flat)) is None and stored_context(str(context)) == (1, 2)
    network, scheduler = load_model(str(context), overrides)
    (case,) = held_out_slices(str(dataset), str(split), ["validation"], 4, overrides)
    image = model_slices(case, stored_context(str(context)))
    assert image.shape == (len(case["image"]), 12, *case["image"].shape[2:])
    assert torch.equal(image[:, :4], case["image"])  # the slice's own modalities first
    samples = draw(network, scheduler, image, "ddim", 2, 1.0, 2, 0)
    assert samples.shape == (2, len(image), 1, *image.shape[2:])
    with pytest.raises(OptionError, match="see different slices"):
        load_model([str(flat), str(context)], overrides)


@pytest.mark.slow
def test_mirror_study_compares_plain_mirrored_and_mixed_ensembles(small_datasets, tmp_path):
    dataset, cases, split, weights, overrides = study_inputs(small_datasets, tmp_path)
    out = tmp_path / "mirror" / "study.md"
    command = [sys.executable, "-m", "scripts.mirror_study", "--dataset_dir", str(dataset)]
    command += ["--ckpt_path", str(weights), "--split_file", str(split), "--output", str(out)]
    command += ["--overrides", repr(overrides), "--steps", "[1]", "--num_samples", "3"]
    command += ["--mixed", "2", "--slice_stride", "6"]
    result = subprocess.run(command, cwd=REPO, env=BUNDLE_ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = out.read_text()
    for side in ("validation", "testing"):
        for ensemble, size in (("plain", 3), ("mirrored", 3), ("2 plain + 1 mirrored", 3)):
            assert f"| {side} | 1 | {ensemble} | {size} |" in report
        assert f"| {side} | 1 | 3 plain + 3 mirrored | 6 |" in report
    with open(out.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    assert {r["case"] for r in rows} == set(cases[1:])
    assert all(0 <= float(r["dice"]) <= 1 for r in rows)

    bad = subprocess.run(
        command[:-4] + ["--mixed", "3"], cwd=REPO, env=BUNDLE_ENV, capture_output=True, text=True
    )
    assert bad.returncode != 0
    assert "--mixed must be between 1 and num_samples - 1, got 3" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "options, message",
    [
        (["--models", "{}", "--draws", 0], "--draws must be >= 1, got 0"),
        (["--models", "{a: runs/x/model.pt}"], "--models must name each checkpoint, quoted"),
    ],
    ids=["draws below one", "models not parsed as a mapping"],
)
def test_bad_options_are_one_clear_error(tmp_path, options, message):
    result = run_script(
        "uncertainty_study", "--dataset_dir", tmp_path, *options, "--output", tmp_path / "study"
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "study").exists()
