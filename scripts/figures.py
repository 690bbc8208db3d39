"""Figures of the results from measured data, as PNG (every figure says: synthetic data).

    python -m scripts.figures ensemble --cases_csv eval/results/cases.csv \
        --output docs/dice_vs_ensemble.png
    python -m scripts.figures steps --sweep docs/performance_sweep.md \
        --output docs/performance_sweep.png
    python -m scripts.figures reliability --predictions "['outputs/diffusion','outputs/unet']" \
        --method "['diffusion','U-Net']" --dataset_dir data/demo --split testing \
        --output docs/reliability.png

What each figure shows: :mod:`bundle.evaluation.figures`.
"""

from __future__ import annotations

from bundle.evaluation.figures import ensemble, reliability, steps
from bundle.workflow.options import run_cli

if __name__ == "__main__":
    run_cli({"ensemble": ensemble, "steps": steps, "reliability": reliability})
