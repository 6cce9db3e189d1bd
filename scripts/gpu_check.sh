#!/usr/bin/env bash
# CUDA checks on a GPU machine whose Python already has torch: the `gpu` tests and the
# maths tests, then short timed runs (about 4 minutes on one H100).
# Usage: scripts/gpu_check.sh [OUT_DIR]. Omniglot is read from $BENCH_DATA (default:
# ./.gpu_data, a folder holding omniglot/).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/gpu_check}"
mkdir -p "$out"
export BENCH_DATA="${BENCH_DATA:-$PWD/.gpu_data}" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
python3 -m pytest -q -m "gpu or not slow" -p no:cacheprovider tests/test_gpu.py tests/test_inner.py \
  tests/test_evaluate.py 2>&1 | tee "$out/pytest.txt" | tail -3

run() {  # name, then the arguments of `bench run`
  local name=$1; shift
  python3 -m bench run --algo reptile --device cuda --results "$out/results-$name" --no-progress "$@" \
    > "$out/$name.json" 2> "$out/$name.err" || tail -3 "$out/$name.err"
  echo "$name: $(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['metric'], round(d['value'], 4), '+-', round(d['ci95'], 4), d['tasks'], 'tasks,', d['ms_per_meta_iter'], 'ms/meta-iter, eval', d['eval_seconds'], 's')" "$out/$name.json")"
}
run omniglot-batched --preset omniglot-5w1s --set meta_iters=1000 --set eval_tasks=1000 --set batched=true
run omniglot-serial --preset omniglot-5w1s --set meta_iters=200 --set eval_tasks=1000
run sine --preset sine --set meta_iters=5000
