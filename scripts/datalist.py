"""Write a MONAI datalist JSON with a seeded, patient-level train/validation/test split.

    python -m scripts.datalist --dataset_dir data/demo --output datalist.json --num_folds 5 --fold 0

Every case is validated on the way (files present and readable, one shape and affine across
modalities, labels in the layout's set): a bad case stops the command with a message naming it.
"""

from __future__ import annotations

from bundle.data.datalist import build_datalist, write_json
from bundle.workflow.options import run_cli


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
    result = build_datalist(dataset_dir, num_folds, fold, test_fraction, seed, read_data)
    write_json(result, output)
    counts = ", ".join(f"{len(result[k])} {k}" for k in ("training", "validation", "testing"))
    print(
        f"{result['layout']} dataset {dataset_dir}: {counts} (fold {fold}/{num_folds}) -> {output}"
    )
    return result


if __name__ == "__main__":
    run_cli(datalist)
