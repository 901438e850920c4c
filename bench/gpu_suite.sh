#!/usr/bin/env bash
# Every GPU benchmark in one short run on a bare CUDA box (torch, transformers, peft; no Ray, MLflow or pydantic):
#   bash bench/gpu_suite.sh OUT_DIR [MEASURE ...]   (MEASURE: g1 p4 p2 multirank p1 p3 methods pytest-gpu; default all)
# Wheels in .whl/ (bitsandbytes, galore-torch, pydantic) are installed when the box lacks them. The methods
# table needs .device/smollm2-tokenizer and .device/countries (copies from the dyrank cache; see docs/benchmarks.md).
# pytest-gpu runs the suite's GPU tests; it needs pytest (and the tests' imports) there too, as wheels in .whl/.
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
shift
wanted=" ${*:-g1 p4 p2 multirank p1 p3 methods pytest-gpu} "
want() { [[ $wanted == *" $1 "* ]]; }
want p4 && run 240 bench/p4_memory.py --out "$out/p4_memory.json"
want p2 && run 200 bench/p2_search_cost.py --out "$out/p2_search_cost.json"
want p1 && run 180 bench/gpu.py --out "$out/gpu.json"
# SmolLM2's shape with random weights, its real tokenizer and the countries splits (multirank, P3, methods)
d=.device/countries
data=(--set model.source=/tmp/smollm2-random --set data.dataset=null --set data.train_file=$d/train.jsonl
      --set data.validation_file=$d/validation.jsonl --set data.test_file=$d/test.jsonl)
python3 bench/random_base.py smollm2 /tmp/smollm2-random --tokenizer .device/smollm2-tokenizer >/dev/null
# G1 (and P1 from the same interleaved steps): dyrank against Trainer + PEFT QLoRA at SmolLM2's shape
want g1 && run 240 bench/g1_trainer_peer.py --config examples/smollm2-countries.yaml "${data[@]}" --steps 80 \
  --warmup 5 --out "$out/g1-smollm2-shape-gpu.json"
want multirank && run 100 bench/multirank_eval.py "${data[@]}" --out "$out/multirank_eval.json"
want p3 && run 240 bench/p3_eval_arms.py "${data[@]}" --out "$out/p3_eval_arms.json"
if want methods; then
  run 290 bench/methods.py --config examples/smollm2-countries.yaml --steps 12 --warmup 2 --jobs 9 \
    --set model.source=/tmp/smollm2-random --set data.dataset=null --set data.train_file=$d/train.jsonl \
    --set data.validation_file=$d/validation.jsonl --set data.test_file=$d/test.jsonl \
    --set training.gradient_checkpointing=true --out "$out/methods-smollm2-shape-gpu.json"
fi
# The suite's own GPU tests (pytest -m gpu): skipped on CPU hosts, so this is where they run.
if want pytest-gpu; then
  echo "== pytest -m gpu"
  timeout 300 python3 -m pytest -m gpu -q -p no:cacheprovider $(grep -rlE "mark\.gpu|mark\(.*gpu" tests) 2>&1 | tail -25 | tee "$out/pytest-gpu.txt"
fi
true
