#!/usr/bin/env bash
# Every GPU benchmark in one short run on a bare CUDA box (torch, transformers, peft; no Ray, MLflow or pydantic):
#   bash bench/gpu_suite.sh OUT_DIR          (with bitsandbytes wheels in .whl/ when the box lacks it)
# Each script has its own time limit so one slow measure cannot starve the others; results land in OUT_DIR.
set -uo pipefail
out=${1:?usage: bench/gpu_suite.sh OUT_DIR}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
run() { local limit=$1; shift; echo "== $*"; timeout "$limit" python3 "$@" 2>&1 | grep -v -E "Loading weights|kernels" | tail -8; }
run 240 bench/p4_memory.py --out "$out/p4_memory.json"
run 200 bench/p2_search_cost.py --out "$out/p2_search_cost.json"
run 100 bench/multirank_eval.py --out "$out/multirank_eval.json"
