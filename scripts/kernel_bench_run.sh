#!/usr/bin/env bash
# One GPU run of the kernel benches at issue 21's sizes, within ~9 minutes on one H200 (each part
# has its own time limit, so a slow part cannot take the others' time; every bench rewrites its
# JSON after each case, so a part cut off keeps what it measured):
#   ceilings (copy bandwidth by four methods, bf16 matmul)          <= 60 s
#   bench_attention --cases targets (decode 64x4K, 8K causal prefill, both models, vs the Triton
#     paged_attention and cuDNN)                                      <= 150 s
#   bench_moe per model at 1-16384 tokens vs vLLM's fused_moe and the CUDA-graphed torch layer
#                                                                     <= 150 s each
# Needs .peers/vllm_fused_moe (scripts/fetch_peers.py, run where PyPI is reachable; carry .peers).
# Usage: bash scripts/kernel_bench_run.sh [OUT]   (OUT: where the tarball and tables go; $OUT by default)
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:?give an output folder}}
export PYTHONUNBUFFERED=1 PYTHONPATH=scripts:.
R=$(mktemp -d)
START=$(date +%s)
t() { echo "[$(( $(date +%s) - START ))s] $*"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$R/device.txt"
python3 -c "import jax, torch, triton; print('jax', jax.__version__, 'torch', torch.__version__, 'triton', triton.__version__, jax.devices()[0].device_kind)" 2>&1 | tail -1 | tee -a "$R/device.txt"
[ -f .peers/vllm_fused_moe/fused_moe_kernel.py ] || echo "warning: .peers/vllm_fused_moe missing: the vLLM peer will be null"

timeout 60 python3 scripts/kernel_ceilings.py --out "$R/ceilings.json" > "$R/ceilings.log" 2>&1
t "ceilings rc=$?"; tail -1 "$R/ceilings.log"
CEIL=()
[ -f "$R/ceilings.json" ] && CEIL=(--ceilings "$R/ceilings.json")  # else each bench measures its own

timeout 150 python3 scripts/bench_attention.py --cases targets --reps 10 ${CEIL[@]+"${CEIL[@]}"} --out-dir "$R" > "$R/attention.log" 2>&1
t "attention rc=$?"; grep -E "tiles:|^\| (decode|prefill)" "$R/attention.log" | cut -c1-240

for m in qwen3_30b_a3b gpt_oss_20b; do
    timeout 150 python3 scripts/bench_moe.py --models $m --peers vllm_fused_moe,torch_grouped_mm --reps 10 \
        ${CEIL[@]+"${CEIL[@]}"} --out-dir "$R/$m" > "$R/moe_$m.log" 2>&1
    t "moe $m rc=$?"; grep -E "^\| (qwen3|gpt)|unavailable|Error" "$R/moe_$m.log" | cut -c1-240 | tail -14
    cp "$R/$m"/moe_*.md "$OUT_DIR/moe_$m.md" 2>/dev/null
done

cp "$R"/attention_*.md "$OUT_DIR/" 2>/dev/null
tar czf "$OUT_DIR/h200_kernels.tgz" -C "$R" .
t "done: $(ls "$OUT_DIR" | tr '\n' ' ')"
