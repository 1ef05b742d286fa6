#!/usr/bin/env bash
# Calibrate the simulator's cost tables on the lent GPU (one GPU): full-size qwen3-30b-a3b, then
# gpt-oss-20b; every table, log, timing and the nvidia-smi line end up in
# $OUT/calibration_<device>.tar.gz. Run from the repository root on the GPU machine:
#
#     LP_JAX_COMMIT=<commit> OUT=$OUT bash scripts/calibrate_gpu.sh   # both models, ~6 minutes on an H200
#     DRY_RUN=1 bash scripts/calibrate_gpu.sh         # the same pipeline, tiny-qwen3-moe, quick grid (CPU: ~2 min)
#
# Time on an H200, estimated from the first H200 calibration (benchmarks/results/
# calibration_h200_2026-12-02: the engine's default ladder, 85 / 74 executables ready in 200 / 189 s,
# grids of 106 / 103 points in 43 / 44 s): a whole-model step compiles in ~4.5 s, a sampling head
# in ~1 s, range steps (8 threads) in ~2 s each. Calibrating at 6 row buckets (ladder_for below:
# the small, decode and chunk sizes, the cohort cap and the lone-prompt bucket layered uses for
# arXiv-long prompts) compiles 50 / 44 executables in ~110 s per model; with start-up, a grid of
# ~75 points (~55 s) and the host run, ~180 s per model, ~6 minutes for both. The cost model is
# parametric in rows, so a table fitted on this ladder serves engines with any other.
# Grid v2 (ROUTING, default qwen3-paper: each call touches the experts a served call touches)
# adds 20 served-iteration points per model (chunked-512's decodes + 512-row chunk at positions
# 0..16K, layered's decodes + a 1-3-layer range of an 8192 / 16384-row prompt; ~10 s) and the
# 16384 bucket's prefill points (~15 s): ~210 s per model, ~7 minutes for both. The tiny models'
# DRY_RUN: 164 s (quick grid, 28 points) on this 2-core VM.
#
# BUDGET_S (default 540, inside the device's 600 s per command) bounds the whole script: a model
# starts only if MODEL_S (default 150) seconds are left, and is stopped when the budget ends (its
# log stays, no table). timings.txt says how long each model took. Then, on the workstation:
#
#     tar xzf calibration_h200.tar.gz -C /tmp && cp /tmp/calibration/h200_*.json lp_jax/sim/tables/
#
# (they replace the datasheet H200 tables; `sim` then prefers them) and commit them.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/lp-jax-jax-cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
PYTHON=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-540}
MODEL_S=${MODEL_S:-150}
# The routing the grid's calls run under (the engine's `routing` option): a calibrated profile
# makes every call touch the experts a served call of its rows touches (grid v2; the first H200
# grid ran the random-weight router, whose calls touch every expert).
ROUTING=${ROUTING:-qwen3-paper}
# Row buckets of the calibrated engine per model (ROW_BUCKETS overrides): 8, the decode batch
# (64), chunked's budget (512), a middle one, layered's cohort cap (8192 + 64 decodes) and the
# largest lone prompt's bucket the ladder then allows (qwen3: 16384 of its 24576; gpt-oss: all
# of L x group_tokens = 12288, + 64).
ladder_for() {
    case "$1" in
        gpt-oss-20b) echo "8,64,512,2048,8256,12352" ;;
        *) echo "8,64,512,2048,8256,16384" ;;
    esac
}
if [ "${DRY_RUN:-0}" = 1 ]; then
    # The whole pipeline on any device, small: the tiny preset (its own row buckets), a coarse grid.
    OUT=${OUT:-$(mktemp -d)}
    MODELS=${MODELS:-tiny-qwen3-moe}
    QUICK=(--quick --host-requests 8)
else
    OUT=${OUT:-$(pwd)/lp-jax-results/calibration}
    MODELS=${MODELS:-qwen3-30b-a3b gpt-oss-20b}
fi
mkdir -p "$OUT/calibration"
start=$(date +%s)
device=$($PYTHON -c "import jax; from lp_jax.bench.calibrate import device_slug; d = jax.devices()[0]; print(device_slug(d.device_kind, d.platform))") \
    || { echo "cannot name the device" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv > "$OUT/calibration/nvidia-smi.csv" 2>&1
# A copy of the tree without .git (the lent machine's) names its commit through LP_JAX_COMMIT.
export LP_JAX_COMMIT=${LP_JAX_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
echo "$LP_JAX_COMMIT" > "$OUT/calibration/commit.txt"
echo "routing $ROUTING" >> "$OUT/calibration/timings.txt"
status=0
for model in $MODELS; do
    left=$(( BUDGET_S - ($(date +%s) - start) ))
    if [ "$left" -lt "$MODEL_S" ]; then
        echo "skipping $model: ${left} s left of the ${BUDGET_S} s budget" | tee -a "$OUT/calibration/skipped.txt"
        status=1
        continue
    fi
    t=$(date +%s)
    EXTRA=(-o "routing=$ROUTING")
    if [ "${DRY_RUN:-0}" = 1 ]; then EXTRA+=("${QUICK[@]}")
    else EXTRA+=(-o "row_buckets=${ROW_BUCKETS:-$(ladder_for "$model")}"); fi
    timeout "$left" $PYTHON -m lp_jax.cli calibrate --model "$model" --no-progress "${EXTRA[@]}" \
        --out "$OUT/calibration/${device}_${model}.json" > "$OUT/calibration/calibrate_${model}.log" 2>&1
    rc=$?
    cat "$OUT/calibration/calibrate_${model}.log"
    echo "$model: rc $rc, $(( $(date +%s) - t )) s" | tee -a "$OUT/calibration/timings.txt"
    [ "$rc" = 0 ] || status=1
done
echo "all: $(( $(date +%s) - start )) s" | tee -a "$OUT/calibration/timings.txt"
tar czf "$OUT/calibration_${device}.tar.gz" -C "$OUT" calibration && rm -rf "$OUT/calibration"
ls -la "$OUT"
exit $status
