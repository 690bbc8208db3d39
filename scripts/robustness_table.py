"""Every bad input the bundle has been tried on and the message it gets: writes docs/robustness.md.

    python -m scripts.robustness_table --output docs/robustness.md

Copies one synthetic case once per corruption in CORRUPTIONS (truncated and garbled files, odd
data types, NaN, empty modalities, wrong shapes, affines, headers and labels, missing and extra
files), runs on each the validation that training, inference and evaluation run before any
work, and tabulates the messages (and warnings), with those of bad dataset folders, datalists,
splits, command-line options, checkpoints, output folders and predictions.
tests/test_robustness.py checks that the committed table is what this writes, and runs the same
corrupted folder through ``monai.bundle run inference``.
"""

from __future__ import annotations

import errno
import gzip
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import monai.bundle
import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser

from bundle.data.datalist import load_datalist, write_json
from bundle.data.layouts import find_cases
from bundle.data.synthetic import make_demo_data
from bundle.data.validation import validate_case
from bundle.ensemble.inferers import STATISTICS
from bundle.evaluation.scoring import check_case
from bundle.io.atomic import atomic_path, write_text
from bundle.io.checkpoints import check_checkpoint
from bundle.io.outputs import check_output_folder, output_path
from bundle.workflow.options import one_line_message, run_cli

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


def _edit_header(path: Path, offset: int, *values: int) -> None:
    """Overwrite 16-bit fields of a .nii.gz header from ``offset`` on, as a byte flip on disk
    (or a hostile file) would."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    for k, value in enumerate(values):
        raw[offset + 2 * k : offset + 2 * k + 2] = value.to_bytes(2, "little")
    path.write_bytes(gzip.compress(bytes(raw)))


def _every_file(change: Callable[[Path], None]) -> Callable[[Path], None]:
    """Apply ``change`` to every NIfTI file of the case folder that ``path`` is in."""

    def apply(path: Path) -> None:
        for file in sorted(path.parent.glob("*.nii.gz")):
            change(file)

    return apply


def sform_only(path: Path) -> None:
    """The same voxels and affine as an sform alone (qform unset) with a 2 mm pixdim: the
    header of the issue's 96.7 ml (instead of 29.8 ml) case."""
    image = nib.load(str(path))
    new = nib.Nifti1Image(np.asanyarray(image.dataobj), None)
    new.header.set_sform(image.affine, code=1)
    new.header.set_qform(None, code=0)
    new.header.set_zooms((2.0, 2.0, 2.0))
    nib.save(new, str(path))


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
    Corruption("constant", "a constant modality (every voxel 100)", "t2",
               lambda p: _resave(p, 0 * _data(p) + 100)),
    Corruption("oneslice", "one-slice volume (every file of the case)", "t1",
               _every_file(lambda p: _resave(p, _data(p)[..., 15:16]))),
    Corruption("thin", "slab of 4 slices (every file of the case)", "t1",
               _every_file(lambda p: _resave(p, _data(p)[..., 14:18]))),
    Corruption("hugedim", "header declaring 2000 x 2000 x 1000 voxels", "t2",
               lambda p: _edit_header(p, 42, 2000, 2000, 1000)),
    Corruption("bigdim", "header declaring 400 x 400 x 400 voxels, more than the file holds",
               "flair", lambda p: _edit_header(p, 42, 400, 400, 400)),
    Corruption("sformonly", "1 mm sform, no qform, 2 mm pixdim (used: the sform)", "t1",
               sform_only, accepted=True),
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


class _Warnings(logging.Handler):
    """The bundle's warnings while a check runs, to show beside its verdict."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _message(check: Callable[[], object]) -> str:
    """The check's one-line error, else ACCEPTED followed by any warnings it logged."""
    warnings = _Warnings()
    logger = logging.getLogger("bundle")
    logger.addHandler(warnings)
    try:
        check()
    except Exception as err:  # MONAI's config machinery wraps ours in RuntimeErrors
        message = one_line_message(err)
        if message is None:
            raise
        return message
    finally:
        logger.removeHandler(warnings)
    return ACCEPTED + "".join(f"; warning: {line}" for line in warnings.lines)


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
    for key in ("pred", *STATISTICS):
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
    samples = np.stack([np.zeros(label.shape, np.float32), np.ones(label.shape, np.float32)], -1)
    nib.save(nib.Nifti1Image(samples, label.affine),
             str(output_path(predictions, good, "samples")))  # fmt: skip
    rows.append(("evaluation: `_samples` of an earlier run beside the mean (0.5 vs 0)",
                 "evaluate.py", _message(lambda: check_case(good_case, predictions))))  # fmt: skip
    return rows


def folder_messages(root: Path, good_case: dict) -> list[tuple[str, str, str]]:
    """(bad input, caught by, message) for folders and splits: a copied case folder, an output
    folder that holds inputs, a datalist listing a case twice, a split without training."""
    case_dir = Path(good_case["label"]).parent
    copies = root / "copies"
    shutil.copytree(case_dir, copies / case_dir.name)
    shutil.copytree(case_dir, copies / f"{case_dir.name} (copy)")
    twice = write_json({"training": [good_case], "validation": [good_case]}, root / "twice.json")
    alone = root / "alone"
    shutil.copytree(case_dir, alone / case_dir.name)
    return [
        ("a copied case folder (`good (copy)`) beside the cases", "find_cases",
         _message(lambda: find_cases(copies))),
        ("output folder holding an input file (the case's own folder)", "inference, segment.py",
         _message(lambda: check_output_folder(case_dir, [good_case]))),
        ("datalist listing a case in training and validation", "load_datalist",
         _message(lambda: load_datalist(twice, root))),
        ("1 labelled case: the split has no training case", "load_datalist, datalist.py",
         _message(lambda: load_datalist(None, alone))),
    ]  # fmt: skip


BAD_OPTIONS: tuple[tuple[str, dict[str, object]], ...] = (
    ("misspelled option `--sampling_step 2`", {"sampling_step": 2}),
    ("misspelled nested key `--network_def#channel [8,16]`", {"network_def#channel": [8, 16]}),
    ("`--sampling_steps 0`", {"sampling_steps": 0}),
    ("`--num_samples abc`", {"num_samples": "abc"}),
    ("`--device cuda:99` (no such GPU)", {"device": "cuda:99"}),
    ("`--split bogus`", {"split": "bogus"}),
    ("`--regions bogus`", {"regions": "bogus"}),
    ("`--quicklook maybe`", {"quicklook": "maybe"}),
    ("`--learn_sigma 2`", {"learn_sigma": 2}),
)
"""Overrides of ``monai.bundle run inference`` that stop it, with one line, before any work."""


def _inference(root: Path, overlay: Path | None = None, **overrides: object) -> None:
    """``monai.bundle run inference`` in this process (it stops in ``initialize`` here), with
    an ``overlay`` config file after inference.yaml."""
    configs = [str(REPO_ROOT / "configs" / "inference.yaml"), *([str(overlay)] if overlay else [])]
    monai.bundle.run(
        "inference",
        config_file=configs,
        bundle_root=str(REPO_ROOT),
        logging_file=False,
        **{"output_dir": str(root / "out"), **overrides},
    )


def _script_message(script: str, *args: object) -> str:
    """The one ``error:`` line of ``python -m scripts.<script> <args>``, else ACCEPTED."""
    command = [sys.executable, "-m", f"scripts.{script}", *(str(a) for a in args)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    if result.returncode == 0:
        return ACCEPTED
    if not errors:
        raise RuntimeError(f"{' '.join(command)} failed without an error line:\n{result.stderr}")
    return errors[-1].removeprefix("error: ")


def _full_disk(path: Path) -> None:
    """A write that the disk refuses (ENOSPC), through the bundle's atomic writer."""
    with atomic_path(path) as tmp:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))


def option_messages(root: Path) -> list[tuple[str, str, str]]:
    """(bad input, caught by, message) for command-line options and a full disk."""
    rows = [
        (what, "monai.bundle run", _message(lambda typed=typed: _inference(root, **typed)))
        for what, typed in BAD_OPTIONS
    ]
    overlay = root / "overlay.yaml"
    overlay.write_text("sampler: bogus\n")
    rows.append(("a bad value in a config file (`sampler: bogus` in an overlay)",
                 "monai.bundle run", _message(lambda: _inference(root, overlay))))  # fmt: skip
    a_file = root / "a_file"
    a_file.write_text("not a folder")
    rows.append(("`--output_dir` naming a file", "monai.bundle run",
                 _message(lambda: _inference(root, output_dir=str(a_file)))))  # fmt: skip
    datalist = ("datalist", "--dataset_dir", root / "alone", "--output", root / "d.json")
    rows.append(("misspelled script option `datalist.py --num_fold 2`", "scripts",
                 _script_message(*datalist, "--num_fold", 2)))  # fmt: skip
    rows.append(("`datalist.py --fold 7` (5 folds)", "datalist.py",
                 _script_message(*datalist, "--fold", 7)))  # fmt: skip
    last = root / "last.pt"
    torch.save({"trainer": {"iteration": 12, "epoch_length": 2, "max_epochs": 6}}, last)
    trainer = Engine(lambda engine, batch: None)
    trainer.state.max_epochs = 3
    rows.append(("`--epochs 3` when last.pt has trained 6 epochs", "training",
                 _message(lambda: check_checkpoint(last, {"trainer": trainer}))))  # fmt: skip
    written = root / "out" / "x.nii.gz"
    rows.append(("full disk while an output is written (ENOSPC; a 1 MB tmpfs in the tests)",
                 "every writer", _message(lambda: _full_disk(written))))  # fmt: skip
    return rows


HEADER = """# Robustness: bad input and faults

Generated by `python -m scripts.robustness_table --output docs/robustness.md`;
`tests/test_robustness.py` fails when this file is not what the script writes.

Every case is validated before any work (`bundle/data/validation.py`): by `scripts/datalist.py`, by
training (every voxel, `validate_voxels: true`), by inference (a bad case is skipped with an
`ERROR - skipped: ...` line, the other cases run, and the run exits with code 1) and by
`scripts/evaluate.py`. A message is one line naming the case and the file. At the command line
bad input never ends in a traceback: the scripts print `error: <message>` and exit with code 2,
`monai.bundle run` prints `error: <message>` and exits with code 1. The same holds for the
command line itself (`bundle/workflow/options.py`): an option that names no config key (or no
parameter of a script) is refused naming the nearest valid one (`::`/`#` nested keys included),
and the values typed for known options are checked before any work: every boolean key
(`learn_sigma`, `validate_voxels`, `amp`, `ema`, `augment`, `save_samples`, `quicklook`,
`overwrite`, `mc_dropout`, `read_data`) takes true/false, yes/no, on/off or 1/0 and nothing
else, and counts, fractions, choices, regions and the device are checked likewise.

Input that is used, with a warning naming the case:

- **Headers whose geometry fields disagree.** One affine rule holds in validation, training,
  inference, the written outputs and evaluation: nibabel's `image.affine`, NIfTI's own order
  (the sform when its code is set, else the qform, else pixdim alone). MONAI's `NibabelReader`
  would prefer whichever field matches pixdim (a 1 mm sform with a 2 mm pixdim then loads at
  2 mm, and the outputs come out in another geometry than the input), so the configs load with
  `bundle.data.transforms.NiftiReader`. Such headers are common (registration tools rewrite the
  sform alone), so they are used, not refused, and the warning says which field was taken.
- **Intensities outside what the model was trained on.** Each channel is z-scored over a brain
  mask that does not mean "not exactly 0" (the median of the volume's outer faces is the
  background, their spread its noise) after clipping to the brain's 0.5th-99.5th percentiles:
  images that were z-scored already (negative background), a noise floor instead of zeros, or a
  patch of extreme values give (nearly) the segmentation of the clean image, with a warning
  naming the case's file. A constant modality is refused (table). The noise floor (2 % of the
  maximum, in the brain too) is where the model shows: on the test's synthetic case the shipped
  v-prediction weights grow the tumour's edge under it (whole-tumour Dice 0.81 against 0.87 for
  the clean copy, 5 samples, seeds 0 and 1 alike; the x0 weights shipped before lost under 0.05),
  while z-scored input gives the clean segmentation voxel for voxel.
- **Brain outside the field of view** (`image_size` mm, centred): the part cut away is not
  segmented, and the warning says how much.
- **Folders that are not cases** (a `C2 (copy)` beside the cases) are skipped with a warning;
  an inference run's own output folder inside the dataset folder is skipped silently.

Outputs and faults:

- Inference never writes into a folder that holds an input file of the run (refused, one line),
  and its files are named `{case}_pred_*` (`bundle/io/outputs.py`, `OUTPUT_NAMES`), so that no
  output can take any layout's file name (BraTS 2020 names its label `{case}_seg.nii.gz`).
- A case is done when every one of its outputs exists (NIfTIs, `.seg.nrrd`, the quick-look and
  the samples when switched on): a run stopped between two files of a case redoes the case.
  Before a case is (re)computed its earlier outputs are deleted, so its files are always one
  run's consistent set (`--overwrite true` leaves no `_samples` of an earlier run); evaluation
  also refuses samples whose mean is not the mean map beside them.
- Two inference runs over one output folder share the cases: each case is claimed through a
  lock file (`.lock-<case>`, an `flock`, which dies with its process: a killed run's lock never
  blocks), a case another run holds or has finished meanwhile is skipped.
- A NaN or Inf training loss stops training at once with `loss became NaN at iteration N; last
  good state saved in <ckpt_dir>/last.pt`, exit code 1. `last.pt` is never written with
  non-finite weights, so it holds the last good state and training can resume from it.
- Killed training (even `kill -9`) resumes from `last.pt` when rerun; the log says
  `resumed from <path> at epoch E iteration I (weights model <digest>)`. Ctrl-C or SIGTERM ends
  the iteration in progress, saves `last.pt` and then ends the process by that signal (a second
  one ends it at once). The best validation score is saved in `last.pt`, so a resumed run
  replaces `models/model.pt` only with a better model.
- Every file (NIfTI, quick-look PNG, datalist, checkpoint) is written to a hidden
  `.tmp-<pid>-<name>` beside its final name and renamed when complete, so a killed run leaves no
  partial file under a real name. Inference and training delete hidden temporaries of dead
  processes when they start. A full disk ends the run with `no space left on <folder>`.
- A header that declares more voxels than the file can hold, or than the bundle reads, is
  refused before any voxel is read (no 16 GB allocation for a 96-byte file).
- A split without a training or a validation case is refused, by training and by
  `scripts/datalist.py`, which print how many cases each side got. A datalist that lists a case
  twice is refused; its relative paths are read from the datalist file's folder.

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
    good_case = next(c for c in find_cases(dataset) if c["case_id"] == good)
    more = other_messages(root, dataset, good) + folder_messages(root, good_case)
    rows += [(what, "", where, message) for what, where, message in more + option_messages(root)]
    lines = [
        f"| {what} | {modality} | {where} | `{message.replace(str(root), '<root>')}` |"
        for what, modality, where, message in rows
    ]
    return HEADER + "\n".join(lines) + "\n"


def robustness_table(output: str = "docs/robustness.md") -> str:
    """Write the table to ``output`` and return it."""
    with tempfile.TemporaryDirectory() as root:
        text = table(root)
    write_text(output, text)
    return text


if __name__ == "__main__":
    run_cli(robustness_table)
