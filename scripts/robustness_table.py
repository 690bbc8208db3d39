"""Every bad input the bundle has been tried on and the message it gets: writes docs/robustness.md.

    python -m scripts.robustness_table --output docs/robustness.md

Copies one synthetic case once per corruption in CORRUPTIONS (truncated and garbled files, odd
data types, NaN, empty modalities, wrong shapes, affines and labels, missing and extra files),
runs on each the validation that training, inference and evaluation run before any work, and
tabulates the messages, with those of bad dataset folders, datalists, checkpoints and
predictions. tests/test_robustness.py checks that the committed table is what this writes, and
runs the same corrupted folder through ``monai.bundle run inference``.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser

from bundle.data.datalist import load_datalist, write_json
from bundle.data.layouts import DatasetError, find_cases
from bundle.data.synthetic import make_demo_data
from bundle.data.validation import validate_case
from bundle.evaluation.scoring import check_case
from bundle.io.checkpoints import check_checkpoint
from bundle.io.outputs import output_path
from bundle.workflow.options import run_cli

REPO_ROOT = Path(__file__).resolve().parents[1]

SHAPE = (48, 48, 32)
ACCEPTED = "accepted"


def _resave(path: Path, data: np.ndarray | None = None, **header: float) -> None:
    image = nib.load(str(path))
    data = np.asanyarray(image.dataobj) if data is None else data
    new = nib.Nifti1Image(data, image.affine, dtype=data.dtype)
    for key, value in header.items():
        new.header[key] = value
    nib.save(new, str(path))


def _edit_header(path: Path, offset: int, value: int) -> None:
    """Overwrite a 16-bit field of a .nii.gz header, as a byte flip on disk would."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[offset : offset + 2] = value.to_bytes(2, "little")
    path.write_bytes(gzip.compress(bytes(raw)))


def _data(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _with_nan(path: Path) -> None:
    data = _data(path).astype(np.float32)
    data[10, 10, 10] = np.nan
    _resave(path, data)


def _shifted(mm: float) -> Callable[[Path], None]:
    def shift(path: Path) -> None:
        image = nib.load(str(path))
        affine = image.affine.copy()
        affine[0, 3] += mm
        nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), affine), str(path))

    return shift


def _label_value(value: float) -> Callable[[Path], None]:
    def relabel(path: Path) -> None:
        data = _data(path).astype(np.float32 if value % 1 else np.uint8)
        data[0, 0, 0] = value
        _resave(path, data)

    return relabel


def _extra(name: str) -> Callable[[Path], None]:
    def copy(path: Path) -> None:
        shutil.copy(path, path.with_name(path.name.replace(path.name.split("_")[-1], name)))

    return copy


@dataclass(frozen=True)
class Corruption:
    """One way to break a case: ``apply`` changes the file of the case named by ``modality``."""

    name: str
    description: str
    modality: str
    apply: Callable[[Path], None]
    accepted: bool = False


CORRUPTIONS: tuple[Corruption, ...] = (
    Corruption("truncated", "`.nii.gz` cut to half its bytes", "t2", _truncate),
    Corruption("notnifti", "text instead of a NIfTI", "t1", lambda p: p.write_text("hello")),
    Corruption("zerobytes", "empty (0-byte) file", "t1ce", lambda p: p.write_bytes(b"")),
    Corruption("datatype", "header byte flip: datatype code 0x7777", "t1ce",
               lambda p: _edit_header(p, 70, 0x7777)),
    Corruption("dim", "header byte flip: dim[1] 640 instead of 48", "flair",
               lambda p: _edit_header(p, 42, 640)),
    Corruption("sizeofhdr", "header byte flip: sizeof_hdr (nibabel repairs it)", "t2",
               lambda p: _edit_header(p, 0, 0xFFFF), accepted=True),
    Corruption("complex", "complex64 voxels", "flair",
               lambda p: _resave(p, _data(p).astype(np.complex64))),
    Corruption("rgb", "RGB voxels", "t1",
               lambda p: _resave(p, np.zeros(_data(p).shape, [(c, "u1") for c in "RGB"]))),
    Corruption("float64", "float64 voxels beyond float32's range (x 1e36)", "t2",
               lambda p: _resave(p, _data(p).astype(np.float64) * 1e36)),
    Corruption("overflow", "int16 voxels scaled beyond float32 (scl_slope 1e36)", "t1",
               lambda p: _resave(p, scl_slope=1e36, scl_inter=0.0)),
    Corruption("int64", "int64 voxels up to 2**62 (stay finite in float32)", "t1ce",
               lambda p: _resave(p, _data(p).astype(np.int64) * 2**50), accepted=True),
    Corruption("nan", "a NaN voxel", "t2", _with_nan),
    Corruption("allzero", "an all-zero modality", "t1ce", lambda p: _resave(p, 0 * _data(p))),
    Corruption("fourd", "4-D volume for one modality", "flair",
               lambda p: _resave(p, np.stack([_data(p)] * 2, -1))),
    Corruption("shape", "2 slices fewer than the other modalities", "t2",
               lambda p: _resave(p, _data(p)[..., :-2])),
    Corruption("affine", "affine shifted by 2 mm", "t1ce", _shifted(2.0)),
    Corruption("affinetiny", "affine shifted by 0.0001 mm (MONAI stacks only np.allclose)",
               "t1ce", _shifted(1e-4)),
    Corruption("labelaffine", "label affine shifted by 0.0001 mm (within 0.001 mm)", "seg",
               _shifted(1e-4), accepted=True),
    Corruption("labels", "label value 3 in a BraTS 2020 case", "seg", _label_value(3)),
    Corruption("fractional", "label value 0.5", "seg", _label_value(0.5)),
    Corruption("labelshape", "label with 2 slices fewer", "seg",
               lambda p: _resave(p, _data(p)[..., :-2])),
    Corruption("noflair", "flair file deleted", "flair", lambda p: p.unlink()),
    Corruption("not1", "t1 file deleted", "t1", lambda p: p.unlink()),
    Corruption("extra", "extra modality file (`_dwi`)", "t1", _extra("dwi.nii.gz")),
    Corruption("twice", "t1 as `.nii` beside `.nii.gz`", "t1",
               lambda p: nib.save(nib.load(str(p)), str(p)[: -len(".gz")])),
)  # fmt: skip


def case_file(case_dir: Path, modality: str) -> Path:
    """A BraTS 2020 case's file, e.g. ``<case>/<case>_t1.nii.gz``."""
    return case_dir / f"{case_dir.name}_{modality}.nii.gz"


def corrupted_dataset(root: str | Path) -> tuple[Path, str]:
    """A BraTS 2020 folder with one good case and one case per corruption, named after it (the
    good one ``good``); returns the folder and the good case's id."""
    root = Path(root)
    source = Path(make_demo_data(str(root / "source"), num_cases=1, seed=1, shape=SHAPE)[0])
    dataset = root / "data"
    for name in ("good", *(c.name for c in CORRUPTIONS)):
        case_dir = dataset / name
        case_dir.mkdir(parents=True)
        for path in sorted(source.iterdir()):
            shutil.copy(path, case_dir / path.name.replace(source.name, name))
    for corruption in CORRUPTIONS:
        corruption.apply(case_file(dataset / corruption.name, corruption.modality))
    return dataset, "good"


def _message(check: Callable[[], object]) -> str:
    try:
        check()
    except DatasetError as err:
        return str(err)
    return ACCEPTED


def case_messages(dataset: Path) -> dict[str, str]:
    """Each case's validation message (ACCEPTED if it passes), as inference's CaseFilter and
    training get it."""
    return {
        case["case_id"]: _message(lambda case=case: validate_case(case))
        for case in find_cases(dataset)
    }


def _network(**overrides: object) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs" / "inference.yaml"))
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content("network_def")


def other_messages(root: Path, dataset: Path, good: str) -> list[tuple[str, str, str]]:
    """(bad input, caught by, message) for bad folders, datalists, checkpoints, predictions."""
    rows = []
    empty = root / "empty"
    empty.mkdir()
    rows.append(("empty dataset folder", "find_cases", _message(lambda: find_cases(empty))))
    good_case = next(c for c in find_cases(dataset) if c["case_id"] == good)
    moved = dict(good_case, image=[p.replace("_t2", "_T2") for p in good_case["image"]])
    listed = write_json({"training": [moved]}, root / "datalist.json")
    rows.append(
        ("datalist JSON naming a missing file", "load_datalist", _message(
            lambda: load_datalist(listed, dataset)))
    )  # fmt: skip
    broken = root / "broken.json"
    broken.write_text('{"training": [')
    rows.append(("datalist file that is not JSON", "load_datalist",
                 _message(lambda: load_datalist(broken, dataset))))  # fmt: skip

    weights = root / "model.pt"
    torch.save(_network().state_dict(), weights)
    other = {"model": _network(regions=["wt", "tc"])}
    rows.append(("weights of another `network_def` (2 regions instead of 1)", "CheckpointLoader",
                 _message(lambda: check_checkpoint(weights, other))))  # fmt: skip
    cut = root / "cut.pt"
    cut.write_bytes(weights.read_bytes()[:1000])
    rows.append(("truncated checkpoint", "CheckpointLoader",
                 _message(lambda: check_checkpoint(cut, other))))  # fmt: skip
    rows.append(("missing checkpoint", "CheckpointLoader",
                 _message(lambda: check_checkpoint(root / "none.pt", other))))  # fmt: skip

    predictions = root / "predictions"
    predictions.mkdir()
    label = nib.load(good_case["label"])
    for key in ("pred", "mean", "variance"):
        nib.save(nib.Nifti1Image(np.zeros(label.shape, np.uint8), label.affine),
                 str(output_path(predictions, good, key)))  # fmt: skip
    output_path(predictions, good, "variance").unlink()
    rows.append(("evaluation: prediction file missing", "evaluate.py",
                 _message(lambda: check_case(good_case, predictions))))  # fmt: skip
    nib.save(nib.Nifti1Image(np.zeros(label.shape[:2] + (7,), np.float32), label.affine),
             str(output_path(predictions, good, "variance")))  # fmt: skip
    rows.append(("evaluation: prediction of another shape", "evaluate.py",
                 _message(lambda: check_case(good_case, predictions))))  # fmt: skip
    nib.save(nib.Nifti1Image(np.zeros(label.shape, np.float32), label.affine),
             str(output_path(predictions, good, "variance")))  # fmt: skip
    rows.append(("evaluation: prediction for other regions", "evaluate.py",
                 _message(lambda: check_case(good_case, predictions, "wt_tc_et"))))  # fmt: skip
    return rows


HEADER = """# Robustness: bad input and faults

Generated by `python -m scripts.robustness_table --output docs/robustness.md`;
`tests/test_robustness.py` fails when this file is not what the script writes.

Every case is validated before any work (`bundle/data/validation.py`): by `scripts/datalist.py`, by
training (every voxel, `validate_voxels: true`), by inference (a bad case is skipped with an
`ERROR - skipped: ...` line, the other cases run, and the run exits with code 1) and by
`scripts/evaluate.py`. A message is one line naming the case and the file. At the command line
bad input never ends in a traceback: the scripts print `error: <message>` and exit with code 2,
`monai.bundle run` prints `error: <message>` and exits with code 1.

Faults:

- A NaN or Inf training loss stops training at once with `loss became NaN at iteration N; last
  good state saved in <ckpt_dir>/last.pt`, exit code 1. `last.pt` is never written with
  non-finite weights, so it holds the last good state and training can resume from it.
- Killed training (even `kill -9`) resumes from `last.pt` when rerun; the log says
  `resumed from <path> at epoch E iteration I (weights model <digest>)`.
- Every file (NIfTI, quick-look PNG, datalist, checkpoint) is written to a hidden
  `.tmp-<pid>-<name>` beside its final name and renamed when complete, so a killed run leaves no
  partial file under a real name. Inference and training delete hidden temporaries of dead
  processes when they start; a rerun of inference skips the finished cases and redoes the rest.

In the messages below `<root>` is the folder the script worked in.

| bad input | file | caught by | message |
|---|---|---|---|
"""


def table(root: str | Path) -> str:
    """The Markdown of docs/robustness.md, from corrupted copies made under ``root``."""
    root = Path(root)
    dataset, good = corrupted_dataset(root)
    messages = case_messages(dataset)
    rows = [("a good case", "", "validate_case", messages.pop(good))]
    for corruption in CORRUPTIONS:
        rows.append(
            (
                corruption.description,
                corruption.modality,
                "validate_case",
                messages.pop(corruption.name),
            )
        )
    rows += [
        (what, "", where, message) for what, where, message in other_messages(root, dataset, good)
    ]
    lines = [
        f"| {what} | {modality} | {where} | `{message.replace(str(root), '<root>')}` |"
        for what, modality, where, message in rows
    ]
    return HEADER + "\n".join(lines) + "\n"


def robustness_table(output: str = "docs/robustness.md") -> str:
    """Write the table to ``output`` and return it."""
    with tempfile.TemporaryDirectory() as root:
        text = table(root)
    Path(output).write_text(text)
    return text


if __name__ == "__main__":
    run_cli(robustness_table)
