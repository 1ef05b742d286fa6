#!/usr/bin/env bash
# Issue 22's GPU runs, for a machine with 2 Hopper GPUs (nvidia-h200-x2), from the source tree:
#   1. a Qwen3-30B-A3B decode iteration at batch 64 (2048-token histories), TP2 against TP1
#      (done when TP2 <= 0.6 x TP1), each in its own process (TP1 uses GPU 0 only);
#   2. the paper's README workload (arXiv, 100 prompts at 1.5 requests/s) at TP2 with layered and
#      chunked prefill, mean TTFT / TPOT / E2E beside the paper's (2xH100, TP2: layered 713 ms /
#      15.1 ms / 3.53 s; vLLM chunked 1019 ms / 19.7 ms / 4.90 s);
#   and first the all-reduce latency and bus bandwidth between the two GPUs (collectives.json).
# Usage: bash scripts/parallel_gpu_run.sh OUT_DIR    (about 30-40 min; writes everything to OUT_DIR)
set -euo pipefail
out=${1:?usage: bash scripts/parallel_gpu_run.sh OUT_DIR}
mkdir -p "$out"
export PYTHONPATH=. XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/nvidia-smi.csv"
git rev-parse HEAD > "$out/commit.txt"

# The simulator's all-reduce term, stored in the H200 cost tables where they exist (commit them).
tables=$(for t in lp_jax/sim/tables/h200_*.json; do [ -e "$t" ] && echo "--add-to-table $t"; done || true)
python3 scripts/measure_collectives.py --out "$out/collectives.json" $tables
CUDA_VISIBLE_DEVICES=0 python3 scripts/probe_decode.py --model qwen3-30b-a3b --batch 64 --context 2048 \
    --tp 1 | tee "$out/decode_tp1.log"
python3 scripts/probe_decode.py --model qwen3-30b-a3b --batch 64 --context 2048 --tp 2 | tee "$out/decode_tp2.log"

for schedule in layered chunked; do
    python3 -m lp_jax.cli bench --model qwen3-30b-a3b --workload arxiv-long --num-requests 100 --rate 1.5 \
        --schedule "$schedule" --tp 2 --no-progress --out "$out/arxiv_tp2_$schedule" 2>&1 \
        | tee "$out/arxiv_tp2_$schedule.log"
done

python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def probe(name):  # the JSON object probe_decode prints last
    text = (out / name).read_text()
    return json.loads(text[text.rindex("\n{") + 1:])
tp1, tp2 = probe("decode_tp1.log"), probe("decode_tp2.log")
lines = [f"# Issue 22 on {tp2['devices']} x {tp2['device']}", "",
         f"Decode iteration, qwen3-30b-a3b, batch 64, 2048-token histories: TP1 {tp1['iteration_ms_median']:.2f} ms, "
         f"TP2 {tp2['iteration_ms_median']:.2f} ms, TP2 / TP1 = {tp2['iteration_ms_median'] / tp1['iteration_ms_median']:.3f} "
         "(target <= 0.6)", "",
         "arXiv workload, 100 prompts at 1.5 requests/s, TP2 | mean TTFT ms | mean TPOT ms | mean E2E s | paper (2xH100 TP2)",
         "--- | --- | --- | --- | ---"]
paper = {"layered": "713 / 15.1 / 3.53", "chunked": "vLLM 1019 / 19.7 / 4.90"}
for schedule in ("layered", "chunked"):
    r = json.loads((out / f"arxiv_tp2_{schedule}" / "vllm_result.json").read_text())
    lines.append(f"{schedule} | {r['mean_ttft_ms']:.0f} | {r['mean_tpot_ms']:.1f} | {r['mean_e2el_ms'] / 1e3:.2f} | "
                 f"{paper[schedule]}")
(out / "README.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
