"""Write synthetic BraTS-like cases (no download, seeded, a few seconds a case) for demos and tests.

    python -m scripts.make_demo_data --output_dir data/demo --num_cases 8 --layout brats2020 \
        [--seed 0 --start_index 1 --shape 240,240,155 --with_labels true]

The generator is :mod:`bundle.data.synthetic` (what the brains and tumours look like, and how
each layout's files are named and numbered).
"""

from __future__ import annotations

from bundle.data.synthetic import make_demo_data
from bundle.workflow.options import run_cli

if __name__ == "__main__":
    # the per-case lines already name every case: keep fire from printing the returned paths too
    run_cli(make_demo_data)
