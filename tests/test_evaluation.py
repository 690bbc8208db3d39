"""Metrics of the paper's table and of the uncertainty on hand-made volumes with known answers,
and the evaluation through its script and its bundle config."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from bundle.data.layouts import find_cases
from bundle.ensemble.outputs import VARIANCE_SLICE_SIGMA_MM, slice_axis, smooth_across_slices
from bundle.evaluation.metrics import (
    error_auroc,
    expected_calibration_error,
    expected_dice_gap,
    hd95,
    nan_mean,
    overlap,
    qu_brats_score,
    reliability_bins,
    segmentation_metrics,
    spearman,
    uncertainty_error_overlap,
    uncertainty_metrics,
    variance_error_correlation,
    variance_on_errors,
)
from bundle.evaluation.scoring import evaluate
from bundle.evaluation.validation_metrics import VarianceErrorRatio, each_sample
from tests.bundle_cli import assert_ok, bundle_run, run_script
from tests.predictions import write_predictions


def box(shape, lo, hi) -> np.ndarray:
    volume = np.zeros(shape, bool)
    volume[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return volume


def test_dice_and_jaccard_of_overlapping_boxes():
    a = box((10, 10, 10), (0, 0, 0), (4, 5, 5))  # 100 voxels
    b = box((10, 10, 10), (2, 0, 0), (6, 5, 5))  # 100 voxels, 50 shared
    dice, jaccard = overlap(a, b)
    assert dice == pytest.approx(0.5) and jaccard == pytest.approx(50 / 150)


def test_hd95_respects_anisotropic_spacing():
    a = box((20, 20, 20), (5, 5, 5), (6, 6, 6))
    b = box((20, 20, 20), (5, 5, 8), (6, 6, 9))  # 3 voxels away along the third axis
    assert hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(3.0)
    assert hd95(a, b, (1.0, 1.0, 2.5)) == pytest.approx(7.5)
    assert hd95(a, b, (0.5, 4.0, 1.0)) == pytest.approx(3.0)  # other axes do not matter


def test_empty_mask_conventions():
    empty = np.zeros((240, 240, 155), bool)
    some = box(empty.shape, (10, 10, 10), (12, 12, 12))
    assert segmentation_metrics(empty, empty, (1, 1, 1)) == {
        "dice": 1.0,
        "hd95": 0.0,
        "jaccard": 1.0,
    }
    one_empty = segmentation_metrics(some, empty, (1, 1, 1))
    assert one_empty["dice"] == 0 and one_empty["jaccard"] == 0
    assert one_empty["hd95"] == pytest.approx(373.13, abs=0.01)  # BraTS's value for its grid


def test_variance_on_wrong_and_right_voxels():
    truth = box((8, 8, 8), (2, 2, 2), (6, 6, 6))
    pred = box((8, 8, 8), (2, 2, 2), (6, 6, 5))  # misses one layer of 16 voxels
    variance = np.where(pred != truth, 0.2, 0.01)
    brain = np.ones_like(truth)
    stats = uncertainty_metrics(variance, pred, truth, brain)
    assert stats["var_wrong"] == pytest.approx(0.2) and stats["var_right"] == pytest.approx(0.01)
    assert stats["var_ratio"] == pytest.approx(20.0)
    assert stats["var_error_corr"] == pytest.approx(1.0)  # the variance is a copy of the errors
    assert stats["ueo"] == pytest.approx(1.0)


def test_variance_sums_are_the_same_for_numpy_and_torch_and_respect_the_brain():
    seg = np.array([1, 1, 0, 0, 1], np.uint8)
    label = np.array([1.0, 0.0, 1.0, 0.0, 0.0], np.float32)  # wrong: voxels 1, 2, 4
    variance = np.array([0.01, 0.1, 0.2, 0.02, 0.3], np.float32)
    sums = variance_on_errors(variance, seg, label)
    assert sums == pytest.approx((0.6, 3, 0.03, 2))
    as_torch = variance_on_errors(*(torch.from_numpy(a) for a in (variance, seg, label)))
    assert as_torch == pytest.approx(sums)
    brain = np.array([True, True, True, True, False])
    assert variance_on_errors(variance, seg, label, brain) == pytest.approx((0.3, 2, 0.03, 2))


def test_nan_mean_leaves_out_undefined_values():
    assert nan_mean([1.0, float("nan"), 3.0]) == 2.0
    assert np.isnan(nan_mean([float("nan"), float("nan")]))


def test_validation_metric_pools_variance_over_images():
    seg = [torch.tensor([1, 0, 0, 0]), torch.tensor([1, 1])]
    label = [torch.tensor([0.0, 0, 0, 0]), torch.tensor([1.0, 0])]
    variance = [torch.tensor([0.2, 0.01, 0.01, 0.01]), torch.tensor([0.01, 0.1])]
    metric = VarianceErrorRatio()
    metric.reset()
    metric.update((variance, seg, label))
    # wrong: 0.2 and 0.1 (mean 0.15); right: four voxels of 0.01
    assert metric.compute() == pytest.approx(15.0)


def test_validation_sample_dice_scores_each_sample_alone():
    from ignite.engine import Engine
    from monai.handlers import MeanDice

    label = torch.zeros(1, 4, 4)
    label[0, :2, :2] = 1  # 4 tumour pixels
    right, half, miss = (torch.zeros(1, 4, 4) for _ in range(3))
    right[0, :2, :2] = 0.9
    half[0, :2, 0] = 0.8  # 2 of the 4: Dice 2 * 2 / (2 + 4)
    miss[0, 3, 3] = 0.7  # outside: Dice 0
    items = [{"samples": torch.cat([right, half, miss]), "label": label}]
    items.append({"samples": torch.cat([right, right, right]), "label": label})
    engine = Engine(lambda engine, batch: batch)
    MeanDice(include_background=True, output_transform=each_sample(1)).attach(engine, "dice")
    engine.run([items], max_epochs=1)
    assert engine.state.metrics["dice"] == pytest.approx((1 + 2 / 3 + 0 + 3) / 6)


def test_correlation_sign_and_degenerate_maps():
    error = np.array([1, 1, 0, 0, 0, 0], bool)
    assert variance_error_correlation(np.array([0.2, 0.1, 0, 0, 0.05, 0]), error) > 0.5
    assert variance_error_correlation(np.array([0, 0, 0.2, 0.1, 0.1, 0.2]), error) < -0.5
    assert np.isnan(variance_error_correlation(np.zeros(6), error))  # no uncertainty
    assert np.isnan(variance_error_correlation(np.ones(6), np.zeros(6, bool)))  # no error


def test_calibration_error_known_answers():
    truth = np.arange(10) < 3
    assert expected_calibration_error(np.full(10, 0.3), truth) == pytest.approx(0.0)
    # two bins: p = 0.1 on 10 voxels, half tumour (gap 0.4); p = 0.9 on 10 voxels, 9 tumour (0)
    prob = np.r_[np.full(10, 0.1), np.full(10, 0.9)]
    truth = np.r_[np.arange(10) < 5, np.arange(10) < 9]
    assert expected_calibration_error(prob, truth) == pytest.approx(0.5 * 0.4)
    count, prob_sum, truth_sum = reliability_bins(prob, truth, bins=15)
    assert count.sum() == 20 and count[1] == 10 and count[13] == 10
    assert truth_sum[1] == 5 and prob_sum[13] == pytest.approx(9.0)
    # a sure, always right map is calibrated; a sure, always wrong one is off by 1
    assert expected_calibration_error(truth.astype(float), truth) == 0.0
    assert expected_calibration_error(1.0 - truth, truth) == pytest.approx(1.0)


def test_uncertainty_error_overlap_known_answers():
    error = np.arange(20) < 4  # 4 errors among 20 brain voxels
    assert uncertainty_error_overlap(error * 0.3, error) == pytest.approx(1.0)
    # a uniform map can at best flag everything: Dice 2 * 4 / (20 + 4)
    assert uncertainty_error_overlap(np.full(20, 0.1), error) == pytest.approx(8 / 24)
    assert uncertainty_error_overlap(np.zeros(20), error) == 0.0  # no uncertainty flags nothing
    # the best threshold keeps the 2 most uncertain errors and one correct voxel out
    graded = np.r_[0.9, 0.8, 0.1, 0.1, 0.5, np.zeros(15)]
    assert uncertainty_error_overlap(graded, error) == pytest.approx(max(4 / 6, 4 / 7, 8 / 9))
    assert uncertainty_error_overlap(np.zeros(20), np.zeros(20, bool)) == 1.0


def qu_brats_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """20 brain voxels: 2 true positives, 2 false positives, 2 false negatives (Dice 0.5)."""
    truth = np.zeros(20, bool)
    pred = np.zeros(20, bool)
    truth[[0, 1, 2, 3]] = True
    pred[[0, 1, 4, 5]] = True
    return pred, truth, pred != truth


def test_error_auroc_known_answers():
    error = np.array([1, 1, 0, 0, 0, 0], bool)
    # every wrong voxel more uncertain than every right one: 1; the reverse: 0
    assert error_auroc(np.array([0.9, 0.8, 0.1, 0.1, 0.0, 0.2]), error) == 1.0
    assert error_auroc(np.array([0.0, 0.0, 0.1, 0.1, 0.3, 0.2]), error) == 0.0
    # no uncertainty at all: every pair ties, chance
    assert error_auroc(np.zeros(6), error) == 0.5
    # one wrong voxel above all right ones, one tied with the two lowest right ones:
    # (4 + (0 + 0.5 * 2)) / (2 * 4)
    assert error_auroc(np.array([0.5, 0.0, 0.0, 0.0, 0.1, 0.2]), error) == pytest.approx(5 / 8)
    assert np.isnan(error_auroc(np.ones(3), np.zeros(3, bool)))


def test_spearman_known_answers():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties take their average rank: ranks (1.5, 1.5, 3) against (1, 2, 3)
    assert spearman([5, 5, 9], [1, 2, 3]) == pytest.approx(
        np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1]
    )
    assert np.isnan(spearman([1, 2], [2, 1])) and np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_expected_dice_gap_is_zero_when_samples_agree_and_grows_with_doubt():
    agreed = np.zeros((4, 4))
    agreed[1:3, 1:3] = 1.0
    assert expected_dice_gap(agreed) == 0.0
    assert expected_dice_gap(np.zeros((4, 4))) == 0.0
    # two voxels every sample calls tumour, two that 2 of 5 samples call tumour: a sample
    # overlaps the segmentation (the two sure voxels) in 2 voxels and has 2.8 on average
    doubt = np.zeros((4, 4))
    doubt[0, :2], doubt[3, :2] = 1.0, 0.4
    assert expected_dice_gap(doubt) == pytest.approx(1 - 2 * 2 / (2 + 2.8))
    # the same disagreement around a larger tumour matters less
    large = np.zeros((8, 8))
    large[:4, :4], large[7, :2] = 1.0, 0.4
    assert 0 < expected_dice_gap(large) < expected_dice_gap(doubt)


def test_qu_brats_rewards_uncertainty_that_marks_the_errors():
    pred, truth, error = qu_brats_case()
    brain = np.ones(20, bool)
    exact = qu_brats_score(error.astype(float), pred, truth, brain)
    # every threshold below 1 filters exactly the errors: Dice 1 there, nothing right filtered
    assert exact["qu_ftp_auc"] == 0.0 and exact["qu_ftn_auc"] == 0.0
    assert exact["qu_dice_auc"] == pytest.approx(1 - 0.5 / 80)  # Dice 0.5 only at t = 1
    assert exact["qu_brats"] == pytest.approx((1 - 0.5 / 80 + 2) / 3)
    uniform = qu_brats_score(np.full(20, 0.5), pred, truth, brain)
    # below t = 0.5 everything is filtered (Dice of nothing 1, all TP and TN filtered)
    assert uniform["qu_ftp_auc"] == pytest.approx(0.475 + 0.0125)
    assert uniform["qu_dice_auc"] == pytest.approx(0.475 + 0.0125 * 1.5 + 0.25)
    assert uniform["qu_brats"] == pytest.approx((0.74375 + 2 * (1 - 0.4875)) / 3)
    none = qu_brats_score(np.zeros(20), pred, truth, brain)
    assert none["qu_brats"] == pytest.approx((0.5 + 2) / 3)
    assert exact["qu_brats"] > none["qu_brats"] > uniform["qu_brats"]


def test_qu_brats_counts_filtered_negatives_on_the_brain_only():
    pred, truth, error = qu_brats_case()
    uncertainty = error.astype(float)
    uncertainty[10:] = 1.0  # uncertain true negatives, half of them outside the brain
    brain = np.arange(20) < 15
    score = qu_brats_score(uncertainty, pred, truth, brain)
    # 5 of the 9 true negatives of the brain are filtered below t = 1
    assert score["qu_ftn_auc"] == pytest.approx(5 / 9 * (1 - 1 / 80))


@pytest.mark.slow
def test_evaluate_script_scores_a_prediction_folder(small_datasets, tmp_path):
    cases = find_cases(small_datasets["brats2020"])
    predictions = tmp_path / "pred"
    for i, case in enumerate(cases):
        label = nib.load(case["label"])
        truth = (np.asanyarray(label.dataobj) > 0).astype(np.uint8)
        seg = truth if i == 0 else np.zeros_like(truth)  # case 0 perfect, the others empty
        samples = np.stack([seg, seg, truth], -1).astype(np.float32)
        write_predictions(predictions, case, seg, samples.mean(-1), samples.var(-1), samples)
    result = run_script(
        "evaluate",
        "--predictions",
        predictions,
        "--dataset_dir",
        small_datasets["brats2020"],
        "--split",
        "all",
        "--output",
        tmp_path / "eval",
        "--method",
        "test",
        "--min_component_fraction",
        "0",  # every part of the synthetic tumour counts (the clean-up: its own test)
        "--variance_slice_sigma_mm",
        "0",  # each slice's own variance (the pooling over slices: its own test)
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(open(tmp_path / "eval" / "cases.csv")))
    by_case = {(r["case"], r["ensemble"]): r for r in rows}
    assert {r["region"] for r in rows} == {"wt"}
    first, second = cases[0]["case_id"], cases[1]["case_id"]
    assert float(by_case[first, "all"]["dice"]) == 1.0
    assert float(by_case[second, "all"]["dice"]) == 0.0
    assert float(by_case[second, "3"]["dice"]) == 0.0  # 1 of 3 samples right: mean < 0.5
    assert float(by_case[second, "1"]["dice"]) == 0.0
    # each sample alone, averaged: two empty samples and one right one, where their vote is empty
    assert float(by_case[second, "each"]["dice"]) == pytest.approx(1 / 3)
    assert float(by_case[first, "each"]["dice"]) == 1.0
    # the missed tumour is exactly where the 3 samples disagree
    assert float(by_case[second, "3"]["ueo"]) == 1.0
    assert float(by_case[second, "all"]["var_error_corr"]) == pytest.approx(1.0)
    assert float(by_case[second, "1"]["ueo"]) == 0.0  # one sample: no variance
    # every missed voxel carries variance, and only they do: the variance finds the errors
    assert float(by_case[second, "3"]["auroc"]) == 1.0
    assert float(by_case[second, "3"]["errors_with_variance"]) == 1.0
    assert float(by_case[second, "1"]["auroc"]) == 0.5
    assert float(by_case[second, "1"]["errors_with_variance"]) == 0.0
    # the case score: samples agree on the perfect case; on the missed one a third of them
    # find the tumour the (empty) segmentation misses
    assert float(by_case[first, "all"]["case_uncertainty"]) == 0.0
    assert float(by_case[second, "3"]["case_uncertainty"]) == 1.0
    summary = (tmp_path / "eval" / "summary.md").read_text()
    assert "| test | wt | all | 3 |" in summary and "QU-BraTS" in summary
    assert "AUROC" in summary and "Spearman(score, Dice)" in summary


@pytest.mark.parametrize("fraction", [0.2, 0.0])
def test_ensembles_of_saved_samples_lose_their_small_parts_as_inference_does(
    small_datasets, tmp_path, fraction
):
    cases = find_cases(small_datasets["brats2020"])
    for other in cases:  # the split's cases, all scored; the one studied is overwritten below
        right = (np.asanyarray(nib.load(other["label"]).dataobj) > 0).astype(np.float32)
        write_predictions(tmp_path / "pred", other, right, right, right * 0, right[..., None])
    case = cases[1]  # a tumour in one part
    truth = np.asanyarray(nib.load(case["label"]).dataobj) > 0
    assert ndimage.label(truth, structure=np.ones((3, 3, 3)))[1] == 1
    stray = np.zeros_like(truth)
    stray[:2, :2, :2] = True  # 8 voxels in a corner, far from the tumour
    assert not (stray & truth).any()
    samples = np.stack([truth | stray] * 3, -1).astype(np.float32)
    seg = (truth | stray).astype(np.uint8)  # as written by a run without the clean-up
    write_predictions(tmp_path / "pred", case, seg, samples.mean(-1), samples.var(-1), samples)
    evaluate(
        str(tmp_path / "pred"),
        str(small_datasets["brats2020"]),
        split="all",
        output=str(tmp_path / "eval"),
        min_component_fraction=fraction,
    )
    rows = list(csv.DictReader(open(tmp_path / "eval" / "cases.csv")))
    dice = {r["ensemble"]: float(r["dice"]) for r in rows if r["case"] == case["case_id"]}
    with_stray = 2 * truth.sum() / (2 * truth.sum() + stray.sum())
    assert dice["all"] == pytest.approx(with_stray)  # the written segmentation, as it is
    expected = 1.0 if fraction else with_stray
    assert [dice[k] for k in ("1", "3", "each")] == pytest.approx([expected] * 3)


@pytest.mark.parametrize("sigma", [2.0, 0.0])
def test_ensembles_of_saved_samples_pool_their_variance_over_slices_as_inference_does(
    small_datasets, tmp_path, sigma
):
    """Three samples that disagree on every other slice of the tumour, which their mean
    misses there; the written variance pooled over slices as inference writes it with the
    default sigma: the 3-sample ensemble of the saved samples scores as the written map does
    only when evaluated with that sigma."""
    for case in find_cases(small_datasets["brats2020"]):
        label = nib.load(case["label"])
        truth = (np.asanyarray(label.dataobj) > 0).astype(np.float32)
        every_other = np.indices(truth.shape)[slice_axis(label.affine)] % 2 == 0
        disagreeing = truth * every_other
        samples = np.stack([truth - disagreeing, truth - disagreeing, truth], -1)
        variance = smooth_across_slices(samples.var(-1), label.affine, VARIANCE_SLICE_SIGMA_MM)
        seg = (samples.mean(-1) > 0.5).astype(np.uint8)
        write_predictions(tmp_path / "pred", case, seg, samples.mean(-1), variance, samples)
    evaluate(
        str(tmp_path / "pred"),
        str(small_datasets["brats2020"]),
        split="all",
        output=str(tmp_path / "eval"),
        min_component_fraction=0.0,  # the written segmentation kept every part
        variance_slice_sigma_mm=sigma,
    )
    rows = list(csv.DictReader(open(tmp_path / "eval" / "cases.csv")))
    for case_id in {r["case"] for r in rows}:
        by = {r["ensemble"]: r for r in rows if r["case"] == case_id}
        pooled, written = (float(by[k]["var_wrong"]) for k in ("3", "all"))
        assert (pooled == pytest.approx(written, rel=1e-4)) == (sigma == VARIANCE_SLICE_SIGMA_MM)


def test_one_table_for_several_methods(small_datasets, tmp_path):
    cases = find_cases(small_datasets["brats2020"])
    for name, value in (("right", 1), ("empty", 0)):
        for case in cases:
            truth = np.asanyarray(nib.load(case["label"]).dataobj) > 0
            seg = truth * value
            write_predictions(tmp_path / name, case, seg, seg, np.zeros(seg.shape))
    summary = evaluate(
        [str(tmp_path / "right"), str(tmp_path / "empty")],
        str(small_datasets["brats2020"]),
        split="all",
        output=str(tmp_path / "eval"),
        method=["A", "B"],
    )
    assert [(s["method"], s["dice"]) for s in summary] == [("A", 1.0), ("B", 0.0)]
    assert "ece" in summary[0] and "var_error_corr" not in summary[0]  # no variance: n/a
    rows = list(csv.DictReader(open(tmp_path / "eval" / "cases.csv")))
    assert [r["method"] for r in rows] == ["A"] * 3 + ["B"] * 3
    with pytest.raises(ValueError, match="method name"):
        evaluate([str(tmp_path / "right")], str(small_datasets["brats2020"]), method=["A", "B"])


def test_saved_samples_are_segmented_at_each_folders_threshold(small_datasets, tmp_path):
    """Samples of 0.45 on the tumour: tumour for a folder evaluated at 0.4 (the diffusion
    model's threshold), nothing at 0.5 (the U-Net's), in one table."""
    cases = find_cases(small_datasets["brats2020"])
    for name in ("diffusion", "unet"):
        for case in cases:
            truth = np.asanyarray(nib.load(case["label"]).dataobj) > 0
            samples = np.stack([truth * 0.45] * 2, -1).astype(np.float32)
            mean = samples.mean(-1)
            write_predictions(tmp_path / name, case, truth, mean, samples.var(-1), samples)
    folders = [str(tmp_path / "diffusion"), str(tmp_path / "unet")]
    summary = evaluate(
        folders,
        str(small_datasets["brats2020"]),
        split="all",
        output=str(tmp_path / "eval"),
        method=["A", "B"],
        min_component_fraction=0.0,  # every part of the labels
        segmentation_threshold=[0.4, 0.5],
    )
    dice = {(s["method"], s["ensemble"]): s["dice"] for s in summary}
    assert (dice["A", 2], dice["B", 2], dice["A", "each"], dice["B", "each"]) == (1, 0, 1, 0)
    assert dice["A", "all"] == dice["B", "all"] == 1.0  # the written segmentation, as it is
    with pytest.raises(ValueError, match="segmentation threshold"):
        evaluate(
            folders,
            str(small_datasets["brats2020"]),
            method=["A", "B"],
            segmentation_threshold=[0.4],
        )


@pytest.mark.slow
def test_evaluating_config_scores_each_region(small_datasets, tmp_path):
    dataset = small_datasets["brats2023"]  # labels 1 necrosis, 2 edema, 3 enhancing
    predictions = tmp_path / "pred"
    cases = find_cases(dataset)
    for i, case in enumerate(cases):
        label = np.asanyarray(nib.load(case["label"]).dataobj).astype(np.uint8)
        # case 0 right; case 1 calls enhancing necrosis (wt and tc right, et missed); case 2 empty
        seg = [label, np.where(label == 3, 1, label), np.zeros_like(label)][i]
        masks = np.stack([np.isin(seg, v) for v in ([1, 2, 3], [1, 3], [3])], -1)
        write_predictions(predictions, case, seg, masks, np.zeros(masks.shape))
    result = bundle_run(
        "evaluating",
        ["inference.yaml", "evaluate.yaml"],
        {
            "dataset_dir": dataset,
            "split": "all",
            "predictions_dir": predictions,
            "eval_dir": tmp_path / "eval",
            "method": "handmade",
            "regions": "wt_tc_et",
        },
        timeout=300,
    )
    assert_ok(result)
    rows = list(csv.DictReader(open(tmp_path / "eval" / "cases.csv")))
    dice = {(r["case"], r["region"]): float(r["dice"]) for r in rows}
    first, second, third = (case["case_id"] for case in cases)
    assert [dice[first, r] for r in ("wt", "tc", "et")] == [1.0, 1.0, 1.0]
    assert [dice[second, r] for r in ("wt", "tc", "et")] == [1.0, 1.0, 0.0]
    assert [dice[third, r] for r in ("wt", "tc", "et")] == [0.0, 0.0, 0.0]
    summary = (tmp_path / "eval" / "summary.md").read_text()
    assert "| handmade | et | all | 3 |" in summary


def test_regions_must_match_the_prediction(small_datasets, tmp_path):
    case = find_cases(small_datasets["brats2020"])[0]
    truth = np.asanyarray(nib.load(case["label"]).dataobj) > 0
    write_predictions(tmp_path / "pred", case, truth, truth, np.zeros(truth.shape))
    with pytest.raises(ValueError, match="has 1 channel"):
        evaluate(
            str(tmp_path / "pred"),
            str(small_datasets["brats2020"]),
            split="all",
            output=str(tmp_path / "eval"),
            regions="wt_tc_et",
        )


def test_a_threshold_per_folder_that_does_not_match_is_one_line(small_datasets, tmp_path):
    for case in find_cases(small_datasets["brats2020"]):
        truth = np.asanyarray(nib.load(case["label"]).dataobj) > 0
        write_predictions(tmp_path / "pred", case, truth, truth * 1.0, np.zeros(truth.shape))
    result = run_script(
        "evaluate", "--predictions", f"['{tmp_path / 'pred'}']", "--method", "['A']",
        "--dataset_dir", small_datasets["brats2020"], "--split", "all",
        "--output", tmp_path / "eval", "--segmentation_threshold", "[0.4,0.5]",
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "1 prediction folder(s) but 2 segmentation threshold(s)" in result.stderr
