#!/usr/bin/env bash
# Re-measure the table and figures of docs/results.md (synthetic demo data, shipped weights):
#   bash scripts/results.sh [DATASET_DIR] [OUTPUTS] [EVAL_DIR]
# Inference of the held-out split (--split testing: 6 of the 30 demo cases) by the diffusion
# ensemble (5 samples, saved), the U-Net and MC dropout (5 passes, saved); one evaluation of all
# three (EVAL_DIR/summary.md is the table, EVAL_DIR/cases.csv the per-case rows); the figures
# in docs/; then the three-region models and their per-region table (EVAL_DIR/wt_tc_et). Cases
# whose outputs exist are not run again.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-data/demo}
OUT=${2:-outputs}
EVAL=${3:-eval/results}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
UNET="['configs/inference.yaml','configs/baseline_unet_inference.yaml']"
infer() {  # config, output folder, extra overrides
  python -m monai.bundle run inference --config_file "$1" --dataset_dir "$DATA" --split testing \
    --output_dir "$OUT/$2" --quicklook false "${@:3}"
}
infer configs/inference.yaml diffusion --save_samples true
infer "$UNET" unet
infer "$UNET" mcdropout --mc_dropout true --save_samples true
python -m scripts.evaluate --dataset_dir "$DATA" --split testing --output "$EVAL" \
  --predictions "['$OUT/diffusion','$OUT/unet','$OUT/mcdropout']" \
  --method "['diffusion (x0, DDIM 5)','U-Net (deterministic)','U-Net + MC dropout']"
python -m scripts.figures ensemble --cases_csv "$EVAL/cases.csv" --output docs/dice_vs_ensemble.png
python -m scripts.figures reliability --dataset_dir "$DATA" --split testing \
  --predictions "['$OUT/diffusion','$OUT/unet','$OUT/mcdropout']" \
  --method "['diffusion','U-Net','MC dropout']" --output docs/reliability.png
python -m scripts.figures steps --sweep docs/performance_sweep.md --output docs/performance_sweep.png
# three regions (models/wt_tc_et and its U-Net baseline): the per-region table
infer configs/inference.yaml wt_tc_et/diffusion --regions wt_tc_et --ckpt_dir models/wt_tc_et \
  --save_samples true
infer "$UNET" wt_tc_et/unet --regions wt_tc_et --ckpt_dir models/baseline_unet_wt_tc_et
python -m scripts.evaluate --dataset_dir "$DATA" --split testing --regions wt_tc_et \
  --output "$EVAL/wt_tc_et" --predictions "['$OUT/wt_tc_et/diffusion','$OUT/wt_tc_et/unet']" \
  --method "['diffusion (x0, DDIM 5)','U-Net (deterministic)']"
