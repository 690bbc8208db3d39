"""Evaluate folders of inference outputs against the ground truth, as the paper's table.

    python -m scripts.evaluate --predictions outputs/diffusion --dataset_dir data/demo \
        --split testing --output eval/diffusion --method "diffusion (DDIM 5)" [--regions wt_tc_et]

Several runs in one table: ``--predictions "['outputs/a','outputs/b']" --method "['A','B']"``.
Per case, region (``--regions wt``: whole tumour; ``wt_tc_et``: whole tumour, core, enhancing)
and ensemble size (the written segmentation, and ensembles of the first 1..N samples when the run
saved them with ``--save_samples true``): Dice, HD95 (mm), Jaccard, and the uncertainty quality
on brain voxels (variance on wrong vs right voxels, variance-error correlation, ECE of the mean
map, UEO, QU-BraTS score). The ensembles of saved samples are segmented as inference does:
``--segmentation_threshold`` is the run's (default: the shipped whole-tumour weights' 0.4; 0.5
for the U-Net and the three-region weights; one per folder as a list). Writes ``cases.csv`` and
``summary.md`` under ``output``; the code is
:func:`bundle.evaluation.scoring.evaluate`, which ``configs/evaluate.yaml`` runs too.
"""

from __future__ import annotations

from bundle.evaluation.scoring import evaluate
from bundle.workflow.options import run_cli

if __name__ == "__main__":
    run_cli(evaluate)
