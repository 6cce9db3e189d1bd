#!/usr/bin/env bash
# The runs behind the committed report (reports/REPORT.md), at the reduced scale a
# 2-core CPU finishes in a few hours, then the report itself. Every run is an ordinary
# `python -m bench run`; existing runs are kept (delete a run folder to redo it), so
# the script can be stopped and started again.
#
#   bash scripts/reference_runs.sh [RESULTS_DIR] [SEEDS...]     (default: results 0 1 2)
#
# Seed 0 also runs the sine task, the variance measurement and the gradient sums. On a
# multi-core CPU, lanes in parallel with one thread each finish sooner than one lane
# with all threads, e.g.:
#   OMP_NUM_THREADS=1 bash scripts/reference_runs.sh results 0 &
#   OMP_NUM_THREADS=1 bash scripts/reference_runs.sh results 1 2
#
# Omniglot 5-way 1-shot: 1,000 of the preset's 100,000 meta-iterations and 1,000 of its
# 10,000 test tasks, evaluated with the shared protocol and each algorithm's own
# (--eval-protocol both), with a periodic evaluation every 200 meta-iterations on 50
# tasks per split for the learning curves. Sine: the full preset. The gradient-sum
# experiment (Reptile paper section 6.2): 1,000 of its 40,000 meta-iterations, 200 test
# tasks, one seed.
set -euo pipefail
RESULTS=${1:-results}
shift || true
SEEDS=${*:-0 1 2}
PY=${PYTHON:-python}

run() {  # run FOLDER ARGS...: one run, unless FOLDER (under RESULTS) already holds its final.json
  local folder=$RESULTS/$1; shift
  if [ -f "$folder/final.json" ]; then echo "kept: $folder"; return; fi
  "$PY" -m bench run --no-progress --force --results "$RESULTS" "$@" >/dev/null
  echo "done: $folder"
}

OMNIGLOT=(--preset omniglot-5w1s --set meta_iters=1000 --set eval_tasks=1000 --set eval_every=200
          --set eval_every_tasks=50 --set snapshots=10 --eval-protocol both)
GRADSUM=(--preset omniglot-gradsum --set meta_iters=1000 --set eval_tasks=200 --set eval_every=200
         --set eval_every_tasks=50 --set snapshots=0)

for seed in $SEEDS; do
  for algo in reptile fomaml maml joint; do
    run "omniglot-5w1s/$algo/seed$seed" --algo "$algo" --seed "$seed" "${OMNIGLOT[@]}"
  done
  if [ "$seed" = 0 ]; then  # once: sine at full scale, the variance, the gradient sums
    run "sine/reptile/seed$seed" --algo reptile --preset sine --seed "$seed"
    run "sine/joint/seed$seed" --algo joint --preset sine --seed "$seed"
    [ -f "$RESULTS/omniglot-5w1s/reptile/seed$seed/variance.csv" ] \
      || "$PY" -m bench variance --no-progress --tasks 50 "$RESULTS/omniglot-5w1s/reptile/seed$seed"
    run "omniglot-gradsum/joint/seed$seed" --algo joint --seed "$seed" "${GRADSUM[@]}"
    for terms in 2 1+2 3 1+2+3 4 1+2+3+4; do
      run "omniglot-gradsum/gradsum-$terms/seed$seed" --algo gradsum --seed "$seed" --set meta_grads=$terms \
        "${GRADSUM[@]}"
    done
    for terms in 1+2 1+2+3 1+2+3+4; do
      run "omniglot-gradsum/gradsum-mean-$terms/seed$seed" --algo gradsum --seed "$seed" --set meta_grads=$terms \
        --set meta_grads_mean=true "${GRADSUM[@]}"
    done
  fi
done
"$PY" -m bench report "$RESULTS" --out reports
