#!/usr/bin/env bash
# Re-measure the table and figures of docs/results.md (real BraTS 2018 cases, shipped weights):
#   bash scripts/results.sh [DATASET_DIR] [OUTPUTS] [EVAL_DIR]
# Inference of the held-out test side of configs/brats18_split.json (4 cases training never saw)
# by the diffusion ensemble (5 samples, saved), the U-Net and MC dropout (5 passes, saved); one
# evaluation of all three (EVAL_DIR/summary.md is the table, EVAL_DIR/cases.csv the per-case
# rows); the figures in docs/. Cases whose outputs exist are not run again.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/brats18}
SPLIT=configs/brats18_split.json
OUT=${2:-outputs}
EVAL=${3:-eval/results}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
UNET="['configs/inference.yaml','configs/baseline_unet_inference.yaml']"
infer() {  # config, output folder, extra overrides
  python -m monai.bundle run inference --config_file "$1" --dataset_dir "$DATA" --split testing \
    --split_file "$SPLIT" --output_dir "$OUT/$2" --quicklook false "${@:3}"
}
infer configs/inference.yaml diffusion --save_samples true
infer "$UNET" unet
infer "$UNET" mcdropout --mc_dropout true --save_samples true
# each model's saved samples segmented at its own threshold of the mean, as its inference does
THRESHOLDS=$(python -c "from bundle.ensemble.outputs import SEGMENTATION_THRESHOLD as d
from bundle.ensemble.inferers import THRESHOLD as u; print([d, u, u])")
python -m scripts.evaluate --dataset_dir "$DATA" --split testing --split_file "$SPLIT" \
  --output "$EVAL" --segmentation_threshold "$THRESHOLDS" \
  --predictions "['$OUT/diffusion','$OUT/unet','$OUT/mcdropout']" \
  --method "['diffusion (v, x0 loss, DDIM 5)','U-Net (deterministic)','U-Net + MC dropout']"
HELD_OUT="4 held-out real cases"
python -m scripts.figures ensemble --cases_csv "$EVAL/cases.csv" --output docs/dice_vs_ensemble.png \
  --data "$HELD_OUT"
python -m scripts.figures reliability --dataset_dir "$DATA" --split testing --split_file "$SPLIT" \
  --predictions "['$OUT/diffusion','$OUT/unet','$OUT/mcdropout']" \
  --method "['diffusion','U-Net','MC dropout']" --output docs/reliability.png --data "$HELD_OUT"
python -m scripts.figures steps --sweep docs/performance_sweep.md --output docs/performance_sweep.png
