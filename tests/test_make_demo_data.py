"""bundle/data/synthetic.py and scripts/make_demo_data.py: files that find_cases reads in every
layout, and synthetic cases realistic enough that a model has to read the images to segment
them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bundle.data.layouts import BRATS2020, LAYOUTS, MODALITIES, SUB_REGIONS, find_cases
from bundle.data.synthetic import CASE_NAMES, make_demo_data, synthesize_case, write_case
from tests.bundle_cli import run_script

SHAPE = (64, 64, 40)
SEED = 3  # its cases 1 to 3 hold all three sub-regions at SHAPE between them
NUM_CASES = 3
FIRST_CASES = {
    "brats2020": ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_003"],
    "brats2023": ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000", "BraTS-GLI-00003-000"],
    "msd": ["BRATS_001", "BRATS_002", "BRATS_003"],
}


def brats_affine(shape: tuple[int, int, int]) -> np.ndarray:
    """Written out here rather than imported, so a wrong affine in the script cannot pass."""
    return np.array(
        [[-1, 0, 0, 0], [0, -1, 0, shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float
    )


def load(path: str | Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    image = nib.load(path)
    return np.asanyarray(image.dataobj), image


def case_arrays(case: dict) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The modalities in the bundle's order and the label of one find_cases entry."""
    if isinstance(case["image"], list):
        images = {m: load(path)[0] for m, path in zip(MODALITIES, case["image"], strict=True)}
    else:
        stacked = load(case["image"])[0]
        images = {
            m: stacked[..., channel]
            for m, channel in zip(MODALITIES, case["channel_order"], strict=True)
        }
    label = load(case["label"])[0] if "label" in case else None
    return images, label


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("demo")
    for name in LAYOUTS:
        make_demo_data(root / name, num_cases=NUM_CASES, seed=SEED, layout=name, shape=SHAPE)
    return {name: root / name for name in LAYOUTS}


@pytest.mark.slow
def test_command_line_writes_cases_find_cases_reads(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = run_script(
        "make_demo_data", "--output_dir", out, "--num_cases", 2, "--seed", SEED,
        "--layout", "brats2023", "--shape", ",".join(map(str, SHAPE)),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "BraTS-GLI-00001-000: tumour" in result.stdout
    assert "wrote 2 brats2023 cases" in result.stdout
    cases = find_cases(out)
    assert [c["case_id"] for c in cases] == ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000"]
    assert {c["layout"] for c in cases} == {"brats2023"}
    # the command line draws the same cases as the function
    images, regions = synthesize_case(np.random.default_rng([SEED, 2]), SHAPE)
    written, label = case_arrays(cases[1])
    for modality in MODALITIES:
        np.testing.assert_array_equal(written[modality], images[modality])
    np.testing.assert_array_equal(label > 0, regions > 0)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_files(datasets: dict[str, Path], name: str) -> None:
    layout = LAYOUTS[name]
    root = datasets[name]
    ids = FIRST_CASES[name]
    if name == "msd":
        expected = [f"imagesTr/{i}.nii.gz" for i in ids] + [f"labelsTr/{i}.nii.gz" for i in ids]
    else:
        suffixes = [*layout.modality_files, "seg"]
        expected = [f"{i}/{layout.file_name(i, s)}" for i in ids for s in suffixes]
    for relative in expected:
        assert (root / relative).is_file(), relative
    assert not [p for p in root.rglob(".*")], "temporary files left behind"

    cases = find_cases(root)
    assert [c["case_id"] for c in cases] == ids
    assert all(c["layout"] == name and "label" in c for c in cases)
    affine = brats_affine(SHAPE)
    for case in cases:
        paths = case["image"] if isinstance(case["image"], list) else [case["image"]]
        for path in [*paths, case["label"]]:
            data, image = load(path)
            np.testing.assert_array_equal(image.affine, affine)
            assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
            assert image.header.get_xyzt_units()[0] == "mm"
            if path == case["label"]:
                assert data.dtype == np.uint8 and data.shape == SHAPE
                assert set(np.unique(data)) <= set(layout.label_values)
            else:
                assert data.dtype == np.int16
                assert data.shape == (SHAPE if name != "msd" else (*SHAPE, len(MODALITIES)))

    if name == "msd":
        dataset = json.loads((root / "dataset.json").read_text())
        assert dataset["name"] == "BrainTumour"
        assert dataset["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
        assert dataset["labels"]["1"] == "edema" and dataset["labels"]["3"] == "enhancing tumour"
        assert dataset["numTraining"] == NUM_CASES and dataset["test"] == []
        assert dataset["training"][0] == {
            "image": f"./imagesTr/{ids[0]}.nii.gz",
            "label": f"./labelsTr/{ids[0]}.nii.gz",
        }


def test_label_numbering_and_channels_agree_across_layouts(datasets: dict[str, Path]) -> None:
    # label of (necrosis, edema, enhancing), from each release's documentation
    numbers = {"brats2020": (1, 2, 4), "brats2023": (1, 2, 3), "msd": (2, 1, 3)}
    by_layout = {name: find_cases(root) for name, root in datasets.items()}
    present = set()
    for index in range(NUM_CASES):
        images, regions = synthesize_case(np.random.default_rng([SEED, index + 1]), SHAPE)
        present.update(np.unique(regions))
        for name, cases in by_layout.items():
            written, label = case_arrays(cases[index])
            for modality in MODALITIES:  # msd: channel_order puts its channels back in order
                np.testing.assert_array_equal(written[modality], images[modality])
            for region, number in zip(SUB_REGIONS, numbers[name], strict=True):
                index_in_map = SUB_REGIONS.index(region) + 1
                np.testing.assert_array_equal(label == number, regions == index_in_map, region)
    assert present == {0, 1, 2, 3}  # the comparison above covered every sub-region
    stacked = load(by_layout["msd"][0]["image"])[0]
    flair = load(by_layout["brats2020"][0]["image"][MODALITIES.index("flair")])[0]
    np.testing.assert_array_equal(stacked[..., 0], flair)  # MSD stores FLAIR first


def test_seeded_and_independent_of_case_count(tmp_path: Path, datasets: dict[str, Path]) -> None:
    first = synthesize_case(np.random.default_rng([5, 1]), SHAPE)
    again = synthesize_case(np.random.default_rng([5, 1]), SHAPE)
    other = synthesize_case(np.random.default_rng([6, 1]), SHAPE)
    for modality in MODALITIES:
        np.testing.assert_array_equal(first[0][modality], again[0][modality])
        assert not np.array_equal(first[0][modality], other[0][modality])
    np.testing.assert_array_equal(first[1], again[1])

    make_demo_data(tmp_path / "two", num_cases=2, seed=SEED, shape=SHAPE)
    make_demo_data(tmp_path / "late", num_cases=1, seed=SEED, shape=SHAPE, start_index=2)
    case_id = CASE_NAMES["brats2020"].format(2)
    for folder in ("two", "late"):
        for suffix in [*BRATS2020.modality_files, "seg"]:
            name = BRATS2020.file_name(case_id, suffix)
            assert (tmp_path / folder / case_id / name).read_bytes() == (
                datasets["brats2020"] / case_id / name
            ).read_bytes()


def test_without_labels(tmp_path: Path) -> None:
    images, regions = synthesize_case(np.random.default_rng([SEED, 1]), SHAPE)
    for name in ("brats2020", "msd"):
        root = tmp_path / name
        write_case(root, "case", images, regions, layout=name)
        write_case(root, "case", images, regions, layout=name, with_label=False)  # overwrites
        make_demo_data(root, num_cases=2, seed=SEED, layout=name, shape=SHAPE, with_labels=False)
        cases = find_cases(root)
        assert len(cases) == 3 and not any("label" in c for c in cases)
        assert not list(root.rglob("*seg.nii.gz")) and not list(root.glob("*Tr/*"))
    dataset = json.loads((tmp_path / "msd" / "dataset.json").read_text())
    assert dataset["numTraining"] == 0 and len(dataset["test"]) == 3


def test_interrupted_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, regions = synthesize_case(np.random.default_rng([SEED, 1]), SHAPE)

    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_case(tmp_path, "case", images, regions)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.fixture(scope="module")
def cohort() -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    return [synthesize_case(np.random.default_rng([11, i]), (96, 96, 62)) for i in range(10)]


def test_images_look_like_skull_stripped_brain_mri(cohort: list) -> None:
    wm_t1 = []
    for images, regions in cohort:
        brain = images["t1"] > 0
        for modality in MODALITIES:  # 0 outside the brain, never 0 inside it
            np.testing.assert_array_equal(images[modality] > 0, brain, err_msg=modality)
        assert not (regions[~brain]).any()
        assert 0.08 < brain.mean() < 0.25
        normal = brain & (regions == 0)
        t1 = images["t1"][normal].astype(float)
        dark, bright = t1 < np.percentile(t1, 10), t1 > np.percentile(t1, 70)  # ~CSF, ~WM
        t2, flair = images["t2"][normal], images["flair"][normal]
        assert t2[dark].mean() > 1.25 * t2[bright].mean()  # T2: CSF bright, white matter dark
        assert flair[dark].mean() < flair[bright].mean()  # FLAIR: CSF suppressed
        wm_t1.append(np.median(t1[bright]))
    assert max(wm_t1) > 2 * min(wm_t1)  # scales vary: no fixed threshold works


def test_tumours_have_sub_region_contrast_and_vary(cohort: list) -> None:
    volumes, centres, sides, rims = [], [], [], 0
    necrosis, edema, enhancing = (
        SUB_REGIONS.index(r) + 1 for r in ("necrosis", "edema", "enhancing")
    )
    for images, regions in cohort:
        if not regions.any():
            continue
        brain = images["t1"] > 0
        normal = brain & (regions == 0)
        t1 = images["t1"][normal]
        white = images["flair"][normal][t1 > np.percentile(t1, 70)]
        if (regions == edema).sum() > 20:
            assert images["flair"][regions == edema].mean() > 1.2 * white.mean()
        if (regions == necrosis).sum() > 20 and (regions == enhancing).sum() > 20:
            t1ce = images["t1ce"]
            assert t1ce[regions == enhancing].mean() > 1.3 * t1ce[regions == necrosis].mean()
            rims += 1
        volumes.append(np.count_nonzero(regions))
        centres.append(np.argwhere(regions).mean(0))
        sides.append(np.sign(centres[-1][0] - np.argwhere(brain)[:, 0].mean()))
    assert len(volumes) >= 6 and rims >= 1
    assert max(volumes) > 5 * min(volumes)
    distances = [np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[:i]]
    assert min(distances) > 1
    assert set(sides) == {-1.0, 1.0}


def test_some_cases_have_no_tumour() -> None:
    empty = [
        not synthesize_case(np.random.default_rng([0, i]), (32, 32, 20))[1].any() for i in range(40)
    ]
    assert 1 <= sum(empty) <= 10


@pytest.mark.slow
def test_full_size_case(tmp_path: Path) -> None:
    started = time.perf_counter()
    make_demo_data(tmp_path, num_cases=1, seed=0)
    seconds = time.perf_counter() - started
    (case,) = find_cases(tmp_path)
    images, label = case_arrays(case)
    assert all(image.shape == (240, 240, 155) for image in images.values())
    np.testing.assert_array_equal(nib.load(case["label"]).affine, brats_affine((240, 240, 155)))
    assert 0.1 < (images["t1"] > 0).mean() < 0.2  # ~1.1-1.8 l of brain
    assert 1_000 < np.count_nonzero(label) < 300_000  # 1 to 300 ml of tumour
    assert seconds < 20, f"{seconds:.1f} s for one full-size case"
