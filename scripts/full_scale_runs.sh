#!/usr/bin/env bash
# One Omniglot column of the Reptile paper's Table 2 at full scale on the CPU, one seed per
# core, then the meta-gradient variance of each run (`bench variance`) and the report.
#
#   bash scripts/full_scale_runs.sh [RESULTS_DIR] [SEEDS...]     (default: results/full-scale 0 1)
#   ALGO=maml bash scripts/full_scale_runs.sh ...                 (reptile, fomaml or maml)
#   COLUMN=5w5s bash scripts/full_scale_runs.sh ...               (5w1s, 5w5s, 20w1s or 20w5s)
#
# The runs are the column's rows for ALGO as `python -m bench reproduce` queues them, with
# `--fast` (on the CPU: compile and channels_last, and the serial path for FOMAML and MAML;
# they change cost, not results): Reptile runs preset omniglot-<COLUMN> as it is (100,000
# meta-iterations, 10,000 test tasks) and is then scored transductively as well (`bench
# evaluate --set transductive=true`: the paper's "Reptile + transduction" row, the same
# meta-training); FOMAML and MAML run preset omniglot-<COLUMN>-maml (the MAML paper's
# settings: 60,000 meta-iterations, transductive, as the table's rows are). Each seed is a
# job of the sweep, all at once (`--workers`: one thread each on 2 cores), its output in
# RESULTS_DIR/logs/. The sweep is safe to stop and start again: a finished run is kept, an
# unfinished one continues from its checkpoint. `python -m bench status RESULTS_DIR` shows
# how far each run is and its time left. On 2 cores, two Reptile seeds took 100 to 102
# minutes together. The report is rebuilt from every run under results/, where a preset's
# runs at several scales get a section per scale.
set -euo pipefail
RESULTS=${1:-results/full-scale}
shift || true
SEEDS=(${*:-0 1})
PY=${PYTHON:-python}
ALGO=${ALGO:-reptile}
COLUMN=${COLUMN:-5w1s}
case "$COLUMN" in
  5w1s|5w5s|20w1s|20w5s) ;;
  *) echo "COLUMN=$COLUMN: choose 5w1s, 5w5s, 20w1s or 20w5s" >&2; exit 2 ;;
esac
case "$ALGO" in
  reptile) PRESET=omniglot-$COLUMN ;;
  fomaml|maml) PRESET=omniglot-$COLUMN-maml ;;
  *) echo "ALGO=$ALGO: choose reptile, fomaml or maml" >&2; exit 2 ;;
esac

"$PY" -m bench reproduce --table omniglot --columns "$COLUMN" --algos "$ALGO" \
  --seeds "$(IFS=,; echo "${SEEDS[*]}")" --fast --device cpu --workers "${#SEEDS[@]}" --results "$RESULTS"
for seed in "${SEEDS[@]}"; do
  run="$RESULTS/$PRESET/$ALGO/seed$seed"
  # the meta-gradient variance over the run's 11 kept initialisations
  [ -f "$run/variance.csv" ] || "$PY" -m bench variance --no-progress --tasks 50 "$run"
done
"$PY" -m bench report results --out reports
