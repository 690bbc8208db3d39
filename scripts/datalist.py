"""Write a MONAI datalist JSON with a seeded, patient-level train/validation/test split.

    python -m scripts.datalist --dataset_dir data/demo --output datalist.json --num_folds 5 --fold 0

Every case is validated on the way (files present and readable, one shape and affine across
modalities, labels in the layout's set): a bad case stops the command with a message naming it,
and so does a split without a training or a validation case. The datalist holds absolute paths;
relative ones in a hand-written datalist are read from the datalist's folder.
"""

from __future__ import annotations

from pathlib import Path

from bundle.data.datalist import build_datalist, check_trainable, split_counts, write_json
from bundle.workflow.options import OptionError, run_cli


def datalist(
    dataset_dir: str,
    output: str = "datalist.json",
    num_folds: int = 5,
    fold: int = 0,
    test_fraction: float = 0.2,
    seed: int = 0,
    read_data: bool = True,
) -> dict:
    """Validate and split ``dataset_dir``; write the datalist to ``output`` and return it."""
    if Path(output).is_dir():
        raise OptionError(f"--output {output} is a folder; give the datalist file's name")
    folder = Path(dataset_dir).absolute()  # the datalist holds whole paths
    result = build_datalist(folder, num_folds, fold, test_fraction, seed, read_data)
    check_trainable(result, f"dataset folder {dataset_dir}")
    write_json(result, output)
    where = f"(fold {fold}/{num_folds}) -> {output}"
    print(f"{result['layout']} dataset {dataset_dir}: {split_counts(result)} cases {where}")
    return result


if __name__ == "__main__":
    run_cli(datalist)
