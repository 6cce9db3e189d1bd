#!/usr/bin/env bash
# One Omniglot column of the Reptile paper's Table 2 at full scale on the CPU, one seed per
# core, then the meta-gradient variance of each run (`bench variance`) and the report.
#
#   bash scripts/full_scale_runs.sh [RESULTS_DIR] [SEEDS...]     (default: results/full-scale 0 1)
#   ALGO=maml bash scripts/full_scale_runs.sh ...                 (reptile, fomaml or maml)
#   COLUMN=5w5s bash scripts/full_scale_runs.sh ...               (5w1s, 5w5s, 20w1s or 20w5s)
#
# Reptile runs preset omniglot-<COLUMN> as it is (100,000 meta-iterations, 10,000 test tasks)
# and is then scored transductively as well (`bench evaluate --set transductive=true`: the
# paper's "Reptile + transduction" row, the same meta-training). FOMAML and MAML run preset
# omniglot-<COLUMN>-maml (the MAML paper's settings: 60,000 meta-iterations, transductive, as
# the table's rows are) on the serial path, the faster one for them on the CPU.
# Every run is an ordinary `python -m bench run` with the CPU's speed settings (compile and
# channels_last, which change cost, not results); `--resume` makes the script safe to stop
# and start again: a finished run is kept, an unfinished one continues from its checkpoint.
# `python -m bench status RESULTS_DIR` shows how far each run is and its time left.
#
# Each seed runs in a process of its own with one thread (OMP_NUM_THREADS=1), all at once:
# on 2 cores, two Reptile seeds took 100 to 102 minutes together. The report is rebuilt from
# every run under results/, where a preset's runs at several scales get a section per scale.
set -euo pipefail
RESULTS=${1:-results/full-scale}
shift || true
SEEDS=${*:-0 1}
PY=${PYTHON:-python}
ALGO=${ALGO:-reptile}
COLUMN=${COLUMN:-5w1s}
case "$COLUMN" in
  5w1s|5w5s|20w1s|20w5s) ;;
  *) echo "COLUMN=$COLUMN: choose 5w1s, 5w5s, 20w1s or 20w5s" >&2; exit 2 ;;
esac
case "$ALGO" in
  reptile) PRESET=omniglot-$COLUMN; SPEED=(--set compile=true --set channels_last=true) ;;
  fomaml|maml) PRESET=omniglot-$COLUMN-maml
               SPEED=(--set batched=false --set compile=true --set channels_last=true) ;;
  *) echo "ALGO=$ALGO: choose reptile, fomaml or maml" >&2; exit 2 ;;
esac

mkdir -p "$RESULTS/logs"
pids=()
for seed in $SEEDS; do
  OMP_NUM_THREADS=1 "$PY" -m bench run --algo "$ALGO" --preset "$PRESET" --seed "$seed" --resume \
    "${SPEED[@]}" --results "$RESULTS" --no-progress > "$RESULTS/logs/$PRESET-$ALGO-seed$seed.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[ "$status" = 0 ] || { echo "a run failed: see $RESULTS/logs/" >&2; exit 1; }
scoring=()
for seed in $SEEDS; do
  run="$RESULTS/$PRESET/$ALGO/seed$seed"
  # the meta-gradient variance over the run's 11 kept initialisations
  [ -f "$run/variance.csv" ] || "$PY" -m bench variance --no-progress --tasks 50 "$run"
  if [ "$ALGO" = reptile ] && [ ! -f "$RESULTS/$PRESET/reptile-transductive/seed$seed/final.json" ]; then
    OMP_NUM_THREADS=1 "$PY" -m bench evaluate --no-progress --set transductive=true "$run" \
      > "$RESULTS/logs/$PRESET-reptile-transductive-seed$seed.log" 2>&1 &
    scoring+=($!)
  fi
done
for pid in "${scoring[@]}"; do wait "$pid" || status=1; done
[ "$status" = 0 ] || { echo "a transductive evaluation failed: see $RESULTS/logs/" >&2; exit 1; }
"$PY" -m bench report results --out reports
