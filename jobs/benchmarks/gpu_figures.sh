#!/usr/bin/env bash
# GPU figures in one short run (about 10 minutes on one GPU): every figure is printed with the card's name.
#   1. a 2-trial Optuna + ASHA study at 0.5 GPU per trial (both trials share the card) on the real data;
#   2. the champion served on the GPU and timed with jobs/benchmarks/benchmark_serve.py (PyTorch on the GPU, ONNX on CPU).
# Usage: bash jobs/benchmarks/gpu_figures.sh [SOURCE] [OUT]    (run from the repository root, facemask installed)
set -euo pipefail
SOURCE=${1:-../shared/datasets/face-mask-detection}
OUT=$(realpath -m "${2:-/tmp/facemask-gpu}")
mkdir -p "$OUT"
export MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db" YOLO_OFFLINE=${YOLO_OFFLINE:-1} YOLO_AUTOINSTALL=false
CARD=$(python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(0))")
echo "card: $CARD"
facemask data prepare --source "$SOURCE" --out "$OUT/yolo" --engine local --no-plots
start=$(date +%s)
facemask tune --data "$OUT/yolo/data.yaml" --model "${MODEL:-yolo26n.yaml}" --trials 2 --epochs "${EPOCHS:-10}" \
    --imgsz 640 --batch 16 --gpus-per-trial 0.5 --cpus-per-trial 4 --grace-period 3 \
    --storage "$OUT/tune" --name gpu-study --experiment facemask-gpu | tee "$OUT/study.txt"
echo "[$CARD] study: 2 trials at 0.5 GPU each in $(( $(date +%s) - start )) s"
python jobs/benchmarks/benchmark_serve.py --model-uri models:/facemask-detector@champion --device 0 --imgsz 640 \
    --requests 256 --max-batch-size 16 --json "$OUT/serve.json" | tee "$OUT/serve.txt"
echo "[$CARD] serving figures above; JSON in $OUT/serve.json"
