#!/usr/bin/env bash
# One GPU run for the decode-size MoE layer (issue 21; opt-in until this run measures it), ~4.5
# minutes on one H200; every part has its own time limit and the bench rewrites its JSON after
# each case, so a part cut off keeps what it measured:
#   GPU tests of the decode layer (model shapes at 1-64 tokens vs the reference and the grouped
#     layer; pytest -rA names each that failed)                       <= 75 s
#   ceilings (copy bandwidth by four methods, bf16 matmul)             <= 35 s
#   bench_moe per model at 1-16384 tokens: ours (the grouped layer, the engine's default) vs
#     vLLM's fused_moe, and our decode path beside them at 1-64 tokens
#     (LP_JAX_MOE_DECODE_MAX_TOKENS=64)                                 <= 80 s each
# If any GPU test fails, the bench runs without the decode path (variable unset: the grouped
# layer only, as the engine runs by default) and says so.
# Needs .peers/vllm_fused_moe (scripts/fetch_peers.py; carry .peers).
# Usage: bash scripts/decode_moe_gpu.sh [OUT]   (OUT: where logs, JSON and tables go; $OUT by default)
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:?give an output folder}}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 PYTHONPATH=scripts:.
START=$(date +%s)
t() { echo "[$(( $(date +%s) - START ))s] $*"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT_DIR/device.txt"
git log --oneline -1 2>/dev/null | tee -a "$OUT_DIR/device.txt"
[ -f .peers/vllm_fused_moe/fused_moe_kernel.py ] || echo "warning: .peers/vllm_fused_moe missing: the vLLM peer will be null"

timeout 75 python3 -m pytest -q -rA -m gpu tests/test_moe_decode.py > "$OUT_DIR/gpu_tests.log" 2>&1
rc=$?
t "decode GPU tests rc=$rc"; grep -E "^(PASSED|FAILED|ERROR)|passed|failed" "$OUT_DIR/gpu_tests.log" | tail -12
unset LP_JAX_MOE_DECODE_MAX_TOKENS
if [ $rc -eq 0 ]; then
    export LP_JAX_MOE_DECODE_MAX_TOKENS=64
    t "decode GPU tests passed: bench measures the decode path beside ours up to 64 tokens (LP_JAX_MOE_DECODE_MAX_TOKENS=64)"
else
    t "decode path failed its GPU tests: bench measures the grouped layer and its peers only (decode path not measured)"
fi

timeout 35 python3 scripts/kernel_ceilings.py --reps 5 --out "$OUT_DIR/ceilings.json" > "$OUT_DIR/ceilings.log" 2>&1
t "ceilings rc=$?"; tail -1 "$OUT_DIR/ceilings.log"
CEIL=()
[ -f "$OUT_DIR/ceilings.json" ] && CEIL=(--ceilings "$OUT_DIR/ceilings.json")  # else each bench measures its own

for m in qwen3_30b_a3b gpt_oss_20b; do
    timeout 80 python3 scripts/bench_moe.py --models $m --peers vllm_fused_moe --reps 10 \
        --tokens 1,8,16,32,64,128,512,2048,8192,16384 ${CEIL[@]+"${CEIL[@]}"} --out-dir "$OUT_DIR/$m" \
        > "$OUT_DIR/moe_$m.log" 2>&1
    t "moe $m rc=$?"; grep -E "^\| (qwen3|gpt)|unavailable|Error" "$OUT_DIR/moe_$m.log" | cut -c1-240 | tail -12
done
t "done: $(ls "$OUT_DIR" | tr '\n' ' ')"
