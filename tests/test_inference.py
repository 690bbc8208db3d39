"""Inference through `monai.bundle run inference`: three NIfTIs per case in the input's geometry."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from bundle.data.synthetic import make_demo_data
from bundle.ensemble.inferers import THRESHOLD
from bundle.ensemble.outputs import (
    MIN_COMPONENT_FRACTION,
    SEGMENTATION_THRESHOLD,
    VARIANCE_SLICE_SIGMA_MM,
    segment,
    smooth_across_slices,
)
from bundle.evaluation.metrics import expected_dice_gap, overlap
from bundle.io.outputs import expected_outputs, output_path
from bundle.workflow.configs import load_config
from tests.bundle_cli import assert_ok, infer, tiny_weights

pytestmark = pytest.mark.slow  # every test here runs the bundle end to end

MODALITY_FILES = ("t1", "t1ce", "t2", "flair", "seg")


def reorient_case(case_dir: Path, out_dir: Path) -> Path:
    """Rewrite a case as a scanner would: axes permuted and flipped (not RAS), anisotropic
    voxels and an oblique affine, so that only a correct inversion gets the geometry back."""
    out = out_dir / case_dir.name
    out.mkdir(parents=True)
    rotation = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    angle = np.deg2rad(10)
    oblique = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    affine = np.eye(4)
    affine[:3, :3] = oblique @ rotation @ np.diag([1.2, 1.0, 1.5])
    affine[:3, 3] = [-30.0, 40.0, -20.0]
    for name in MODALITY_FILES:
        image = nib.load(str(case_dir / f"{case_dir.name}_{name}.nii.gz"))
        data = np.asanyarray(image.dataobj).transpose(2, 0, 1)[::-1]
        nib.save(
            nib.Nifti1Image(np.ascontiguousarray(data), affine),
            str(out / f"{case_dir.name}_{name}.nii.gz"),
        )
    return out


@pytest.fixture(scope="module")
def odd_case(tmp_path_factory) -> Path:
    """One case folder that is neither RAS nor 240x240x155."""
    root = tmp_path_factory.mktemp("odd")
    source = make_demo_data(output_dir=str(root / "src"), num_cases=1, seed=4, shape=(60, 52, 36))[
        0
    ]
    return reorient_case(Path(source), root / "data")


def read(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    image = nib.load(str(path))
    return np.asanyarray(image.dataobj), image


def test_outputs_in_input_geometry(odd_case, tmp_path):
    weights = tiny_weights(tmp_path / "model.pt")
    out = tmp_path / "out"
    # each slice's own variance here (exact where the samples agree); pooled over slices below
    # and a threshold of the mean other than the default, every part kept
    result = infer(
        odd_case,
        out,
        weights,
        save_samples="true",
        variance_slice_sigma_mm=0,
        segmentation_threshold=0.45,
        min_component_fraction=0,
    )
    assert_ok(result)
    case = odd_case.name
    log = result.stdout + result.stderr
    assert f"{case}: tumour" in log and "mean variance in tumour" in log

    reference = nib.load(str(odd_case / f"{case}_flair.nii.gz"))
    mean, mean_img = read(output_path(out, case, "mean"))
    var, var_img = read(output_path(out, case, "variance"))
    seg, seg_img = read(output_path(out, case, "pred"))
    votes, votes_img = read(output_path(out, case, "votes"))
    samples, samples_img = read(output_path(out, case, "samples"))
    for image in (mean_img, var_img, votes_img, seg_img):
        assert image.shape == reference.shape
        np.testing.assert_allclose(image.affine, reference.affine, atol=1e-4)
        assert nib.aff2axcodes(image.affine) == nib.aff2axcodes(reference.affine)
        assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
    assert samples.shape == (*reference.shape, 4)
    assert mean.dtype == np.float32 and var.dtype == np.float32 and seg.dtype == np.uint8
    assert 0.0 <= mean.min() and mean.max() <= 1.0
    assert var.min() >= 0.0 and var.max() <= 0.25 + 1e-6
    assert 0.0 <= votes.min() and votes.max() <= 1.0 and votes.dtype == np.float32
    # brought back by nearest neighbour: every value a whole number of the 4 samples' votes
    np.testing.assert_allclose(votes * 4, np.round(votes * 4), atol=1e-5)
    np.testing.assert_array_equal(seg, (mean > 0.45).astype(np.uint8))
    # the summary line scores the written segmentation against the case's label, voxel for
    # voxel in the input's (permuted, oblique) grid, and gives the case's uncertainty score
    # and flags it for review when the score is above review_threshold (inference.yaml's)
    review = load_config("inference.yaml").get("review_threshold")
    found = re.search(
        rf"uncertainty ([\d.]+)( \(above {review:g}: flagged for review\))?, "
        r"whole-tumour Dice ([\d.]+) against its label",
        log,
    )
    assert found, log[-2000:]
    assert (found.group(2) is not None) == (float(found.group(1)) > review)
    label = np.asanyarray(nib.load(str(odd_case / f"{case}_seg.nii.gz")).dataobj)
    assert float(found.group(3)) == pytest.approx(overlap(seg > 0, label > 0)[0], abs=1e-3)
    assert float(found.group(1)) == pytest.approx(expected_dice_gap(votes), abs=1e-3)
    assert 0 < seg.sum() < seg.size  # the random network does draw masks, not all or nothing
    # where the samples agree the variance is 0, where they disagree it is not. The maps are
    # interpolated back to the input grid one by one, so agreement is exact only where every
    # sample is 0 or 1 (then every interpolated neighbour agreed too, up to round-off in the
    # interpolation weights)
    agree = (samples == samples[..., :1]).all(-1) & np.isin(samples[..., 0], (0.0, 1.0))
    disagree = samples.max(-1) - samples.min(-1) > 0.5
    assert agree.any() and disagree.any()
    assert var[agree].max() < 1e-6
    assert (var[disagree] > 0.01).all()
    # away from the brain there is neither tumour nor uncertainty (within a 2 mm network pixel
    # of it, interpolation back to the 1 mm grid blurs the edge)
    brain = ndimage.binary_dilation(np.asanyarray(reference.dataobj) != 0, iterations=3)
    assert mean[~brain].max() < 1e-6 and var[~brain].max() < 1e-6
    assert output_path(out, case, "quicklook").stat().st_size > 1000

    # the same seed gives the same mean, the variance pooled over the slices of the input's
    # (permuted, oblique) grid by default, and by default the segmentation is the mean above
    # the shipped threshold less its small parts; a new seed other samples
    again = tmp_path / "again"
    assert_ok(infer(odd_case, again, weights))
    np.testing.assert_array_equal(read(output_path(again, case, "mean"))[0], mean)
    mean_tensor = torch.from_numpy(mean[None])
    default = segment(mean_tensor, MIN_COMPONENT_FRACTION, SEGMENTATION_THRESHOLD)[0].numpy()
    np.testing.assert_array_equal(read(output_path(again, case, "pred"))[0], default)
    assert not np.array_equal(default, seg)
    pooled = smooth_across_slices(var, var_img.affine, VARIANCE_SLICE_SIGMA_MM)
    np.testing.assert_allclose(read(output_path(again, case, "variance"))[0], pooled, atol=1e-6)
    assert VARIANCE_SLICE_SIGMA_MM > 0 and not np.allclose(pooled, var, atol=1e-4)
    other = tmp_path / "other"
    assert_ok(infer(odd_case, other, weights, seed=1))
    assert not np.array_equal(read(output_path(other, case, "mean"))[0], mean)


def test_folder_run_skips_finished_cases(small_datasets, tmp_path):
    weights = tiny_weights(tmp_path / "model.pt")
    out = tmp_path / "out"
    assert_ok(infer(small_datasets["brats2023"], out, weights, num_samples=2, quicklook="false"))
    cases = sorted(p.name for p in small_datasets["brats2023"].iterdir() if p.is_dir())
    written = {p.name for p in out.iterdir()}
    for case in cases:
        assert {
            output_path(out, case, k).name for k in expected_outputs(quicklook=False)
        } <= written
    assert not any(name.startswith(".") for name in written)  # no temporary or lock files left
    stamp = output_path(out, cases[0], "mean").stat().st_mtime_ns
    rerun = infer(small_datasets["brats2023"], out, weights, num_samples=2, quicklook="false")
    assert_ok(rerun)
    assert (rerun.stdout + rerun.stderr).count("skipped") == len(cases)
    assert output_path(out, cases[0], "mean").stat().st_mtime_ns == stamp


def test_bad_case_is_skipped_and_the_run_fails_at_the_end(small_datasets, tmp_path):
    dataset = tmp_path / "data"
    shutil.copytree(small_datasets["brats2020"], dataset)
    cases = sorted(p.name for p in dataset.iterdir() if p.is_dir())
    bad = dataset / cases[1] / f"{cases[1]}_t2.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    weights = tiny_weights(tmp_path / "model.pt")
    out = tmp_path / "out"
    result = infer(dataset, out, weights, num_samples=2, quicklook="false")
    log = result.stdout + result.stderr
    assert result.returncode == 1, log[-3000:]
    assert f"skipped: case {cases[1]}: file {bad}" in log
    assert f"1 case(s) failed: {cases[1]}" in log
    assert "Traceback" not in log
    for case in (cases[0], cases[2]):
        assert output_path(out, case, "pred").is_file()
    assert not any(p.name.startswith(cases[1]) for p in out.iterdir())


@pytest.mark.parametrize("clean_up", [{}, {"min_component_fraction": 0}])
def test_three_regions_give_nested_maps_and_a_brats_labelmap(small_datasets, tmp_path, clean_up):
    case = next(p for p in sorted(small_datasets["brats2023"].iterdir()) if p.is_dir())
    weights = tiny_weights(tmp_path / "model.pt", regions="wt_tc_et")
    out = tmp_path / "out"
    # at the three-region weights' threshold of the mean (configs/wt_tc_et.yaml)
    threshold = {"segmentation_threshold": THRESHOLD}
    assert_ok(
        infer(case, out, weights, regions="wt_tc_et", save_samples=True, **threshold, **clean_up)
    )
    reference = nib.load(str(next(case.glob("*-t1n.nii.gz"))))
    mean, _ = read(output_path(out, case.name, "mean"))
    var, _ = read(output_path(out, case.name, "variance"))
    seg, seg_img = read(output_path(out, case.name, "pred"))
    samples, _ = read(output_path(out, case.name, "samples"))
    assert mean.shape == var.shape == (*reference.shape, 3)  # wt, tc, et
    assert seg.shape == reference.shape and seg.dtype == np.uint8
    np.testing.assert_allclose(seg_img.affine, reference.affine, atol=1e-4)
    # every sample nests et in tc in wt (on the network grid, before interpolation back to the
    # input grid, which keeps the order of the channels voxel by voxel), so the mean does too
    samples = samples.reshape(*reference.shape, 4, 3)
    assert (np.diff(samples, axis=-1) <= 1e-6).all()
    assert (np.diff(mean, axis=-1) <= 1e-6).all()
    # the segmentation is one labelmap in the case's BraTS 2023 numbering (3 = enhancing): the
    # mean above the threshold exactly with --min_component_fraction 0, and by default less the
    # small parts that inference removes (a few voxels of the random network's masks)
    masks = mean > THRESHOLD
    expected = np.select([masks[..., 2], masks[..., 1], masks[..., 0]], [3, 1, 2], 0)
    kept = seg > 0
    np.testing.assert_array_equal(seg[kept], expected[kept])
    removed = int((expected > 0).sum() - kept.sum())
    assert not (kept & (expected == 0)).any() and removed < 0.01 * (expected > 0).sum()
    assert removed == 0 if clean_up else removed > 0
    assert set(np.unique(seg)) > {0}
    assert output_path(out, case.name, "quicklook").stat().st_size > 1000


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_cases_above_the_review_threshold_are_flagged(odd_case, tmp_path, threshold):
    weights = tiny_weights(tmp_path / "model.pt")
    result = infer(odd_case, tmp_path / "out", weights, num_samples=2, review_threshold=threshold)
    assert_ok(result)
    log = result.stdout + result.stderr
    flagged = f"(above {threshold:g}: flagged for review)"
    # every score is above 0 (the samples of the random network disagree) and at most 1
    assert (flagged in log) == (threshold == 0.0), log[-2000:]
