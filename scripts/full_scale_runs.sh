#!/usr/bin/env bash
# Omniglot 5-way 1-shot Reptile at the paper's full scale (preset omniglot-5w1s as it is:
# 100,000 meta-iterations, 10,000 test tasks) on the CPU, one seed per core, then the meta-gradient
# variance of each run (`bench variance`) and the report.
# Every run is an ordinary `python -m bench run` with the CPU's speed settings (compile and
# channels_last, which change cost, not results); `--resume` makes the script safe to stop
# and start again: a finished run is kept, an unfinished one continues from its checkpoint.
#
#   bash scripts/full_scale_runs.sh [RESULTS_DIR] [SEEDS...]     (default: results/full-scale 0 1)
#
# Each seed runs in a process of its own with one thread (OMP_NUM_THREADS=1), all at once:
# on 2 cores, two seeds took 100 to 102 minutes together. The report is rebuilt from every run
# under results/, where a preset's runs at several scales get a section per scale.
set -euo pipefail
RESULTS=${1:-results/full-scale}
shift || true
SEEDS=${*:-0 1}
PY=${PYTHON:-python}

mkdir -p "$RESULTS/logs"
pids=()
for seed in $SEEDS; do
  OMP_NUM_THREADS=1 "$PY" -m bench run --algo reptile --preset omniglot-5w1s --seed "$seed" --resume \
    --set compile=true --set channels_last=true --results "$RESULTS" --no-progress \
    > "$RESULTS/logs/seed$seed.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[ "$status" = 0 ] || { echo "a run failed: see $RESULTS/logs/" >&2; exit 1; }
for seed in $SEEDS; do  # the meta-gradient variance over the runs' 11 kept initialisations
  run="$RESULTS/omniglot-5w1s/reptile/seed$seed"
  [ -f "$run/variance.csv" ] || "$PY" -m bench variance --no-progress --tasks 50 "$run"
done
"$PY" -m bench report results --out reports
