#!/usr/bin/env bash
# Calibrate the simulator's cost tables on the lent GPU (one GPU): full-size qwen3-30b-a3b first,
# then gpt-oss-20b while the time allows; every table, log and the copy bandwidth / matmul peaks
# end up in $OUT/calibration_<device>.tar.gz. Run from the repository root on the GPU machine:
#
#     bash scripts/calibrate_gpu.sh            # about 5 minutes per model on an H200
#
# BUDGET_S (default 470) bounds the whole script: a model starts only if the time left covers
# MODEL_S (default 300) seconds; a model cut short by the budget leaves its log (and no table).
# Copy the tables into lp_jax/sim/tables/ (they replace the datasheet ones of that device) and
# commit them.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/lp-jax-jax-cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
OUT=${OUT:-$(pwd)/lp-jax-results/calibration}
BUDGET_S=${BUDGET_S:-470}
MODEL_S=${MODEL_S:-300}
mkdir -p "$OUT/calibration"
start=$(date +%s)
device=$(python3 -c "import jax; from lp_jax.bench.calibrate import device_slug; print(device_slug(jax.devices()[0].device_kind))") || { echo "cannot name the device" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv > "$OUT/calibration/nvidia-smi.csv" 2>&1
git rev-parse --short HEAD > "$OUT/calibration/commit.txt" 2>/dev/null || true
for model in ${MODELS:-qwen3-30b-a3b gpt-oss-20b}; do
    left=$(( BUDGET_S - ($(date +%s) - start) ))
    if [ "$left" -lt "$MODEL_S" ]; then
        echo "skipping $model: ${left} s left of the ${BUDGET_S} s budget" | tee -a "$OUT/calibration/skipped.txt"
        continue
    fi
    timeout "$left" python3 -m lp_jax.cli calibrate --model "$model" --no-progress \
        --out "$OUT/calibration/${device}_${model}.json" 2>&1 | tee "$OUT/calibration/calibrate_${model}.log"
done
tar czf "$OUT/calibration_${device}.tar.gz" -C "$OUT" calibration && rm -rf "$OUT/calibration"
ls -la "$OUT"
