#!/usr/bin/env bash
# CUDA checks on a GPU machine whose Python already has torch: the test suite with the
# `gpu` tests included, then short timed runs. Usage: scripts/gpu_check.sh [OUT_DIR]
# Expects Omniglot under $BENCH_DATA (default: .gpu_data, a folder holding omniglot/).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/gpu_check}"
mkdir -p "$out"
export BENCH_DATA="${BENCH_DATA:-$PWD/.gpu_data}" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
python3 -m pytest -q -m "gpu or not slow" -p no:cacheprovider 2>&1 | tee "$out/pytest.txt" | tail -5
for batched in true false; do
  python3 -m bench run --algo reptile --preset omniglot-5w1s --set meta_iters=1000 --set eval_tasks=1000 \
    --set batched=$batched --device cuda --results "$out/results-$batched" --no-progress \
    > "$out/omniglot-batched-$batched.json" 2> "$out/omniglot-batched-$batched.err"
  tail -3 "$out/omniglot-batched-$batched.err"; cat "$out/omniglot-batched-$batched.json"
done
python3 -m bench run --algo reptile --preset sine --set meta_iters=5000 --device cuda \
  --results "$out/results-sine" --no-progress \
  > "$out/sine.json" 2> "$out/sine.err"; cat "$out/sine.json"
