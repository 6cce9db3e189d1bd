#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU whose Python has torch, in at most 8 minutes
# (every step has its own time limit, which a step that runs over reports): the CUDA tests, the speed table, short accuracy runs of
# the suite's paths, and the projected time of the full omniglot-5w1s Reptile preset.
# It writes reports/gpu/<card>-<date>.md (and the raw outputs in OUT_DIR).
#
# Usage: scripts/gpu_check.sh [OUT_DIR]
#   BENCH_DATA   the data root holding omniglot/ (default: ./.gpu_data)
#   DEVICE       cuda (default); cpu only to try the script itself on a CPU machine
#   ITERS        meta-iterations of each timed run (default 500)
#   PYTHON       the Python with torch (default: python3)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/gpu_check}"
device="${DEVICE:-cuda}"
iters="${ITERS:-500}"
py="${PYTHON:-python3}"
mkdir -p "$out" reports/gpu
export BENCH_DATA="${BENCH_DATA:-$PWD/.gpu_data}" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)

if [ "$device" = cuda ]; then
  card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt"
else
  card="cpu $(nproc) cores"
  echo "$card" > "$out/gpu.txt"
fi
"$py" -c "import torch; print('torch', torch.__version__)" >> "$out/gpu.txt"

# 1. The CUDA tests (marker `gpu`) and the maths tests.
timeout 90 "$py" -m pytest -q -m "gpu or not slow" -p no:cacheprovider tests/test_gpu.py tests/test_inner.py \
  tests/test_algorithms.py > "$out/pytest.txt" 2>&1
echo "pytest exit $?" >> "$out/pytest.txt"

# 2. The speed table: every algorithm and implementation side by side (--quick: 2 rounds).
timeout 120 "$py" -m bench speed --device "$device" --quick --out "$out/speed.csv" > "$out/speed.txt" 2>&1
echo "speed exit $?" >> "$out/speed.txt"

# 3. Short accuracy runs of omniglot-5w1s Reptile: the preset's serial path, the batched
#    path, the serial path compiled, and five seeds trained together.
run() {  # name, timeout, then the arguments of `bench run`
  local name=$1 limit=$2; shift 2
  timeout "$limit" "$py" -m bench run --algo reptile --device "$device" --results "$out/results-$name" \
    --no-progress --set eval_tasks=1000 --set eval_every=0 "$@" > "$out/$name.json" 2> "$out/$name.err"
  echo "$?" > "$out/$name.rc"
}
run serial 60 --set meta_iters="$iters"
run batched 60 --set meta_iters="$iters" --set batched=true
run compiled 90 --set meta_iters="$iters" --set compile=true
run seeds 60 --set meta_iters="$iters" --seeds 0-4 --batch-seeds

"$py" - "$out" "$card" "$iters" "$(( $(date +%s) - start ))" <<'EOF'
"""reports/gpu/<card>-<date>.md from the outputs of scripts/gpu_check.sh."""
import csv, datetime, json, re, sys
from pathlib import Path

out, card, iters, seconds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
full_iters, full_tasks = 100_000, 10_000
lines = [f"# GPU check on {card}, {datetime.date.today()}", "",
         f"`scripts/gpu_check.sh`, {seconds} s in all.", "", "```", (out / "gpu.txt").read_text().strip(), "```", "",
         "## Tests", "", "```", "\n".join((out / "pytest.txt").read_text().strip().splitlines()[-4:]), "```", "",
         "## Speed (`python -m bench speed --quick`), ms per meta-iteration", ""]
if (out / "speed.csv").is_file():
    with open(out / "speed.csv") as f:
        rows = list(csv.DictReader(f))
    lines += ["| algorithm | preset | implementation | ms | first call s | peak MiB | x naive | x learn2learn |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['algo']} | {r['preset']} | {r['implementation']} | {r['ms_per_meta_iter']} | {r['first_call_s']} | "
              f"{r['peak_mem_mb']} | {r['speedup_vs_naive'] or '-'} | {r['speedup_vs_learn2learn'] or '-'} |" for r in rows]
else:
    lines += ["No table: " + (out / "speed.txt").read_text().strip().splitlines()[-1]]
lines += ["", f"## omniglot-5w1s Reptile, {iters:,} meta-iterations, 1,000 test tasks", "",
          "| path | accuracy | ms / meta-iteration | test s (1,000 tasks) | projected full preset (100,000 it., 10,000 tasks) |",
          "|---|---|---|---|---|"]
for name in ("serial", "batched", "compiled", "seeds"):
    rc = (out / f"{name}.rc").read_text().strip() if (out / f"{name}.rc").is_file() else "?"
    try:
        finals = json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError):
        err = (out / f"{name}.err").read_text().strip().splitlines() if (out / f"{name}.err").is_file() else []
        lines.append(f"| {name} | failed (exit {rc}{': ' + err[-1][:120] if err else ''}) | | | |")
        continue
    finals = finals if isinstance(finals, list) else [finals]
    f = finals[0]
    acc = ", ".join(f"{x['value']:.4f}" for x in finals)
    ms = f["ms_per_meta_iter"]  # with several seeds trained together: the group's time per meta-iteration
    per_run = ms / len(finals)
    projected = (full_iters * ms / 1000 + f["eval_seconds"] * full_tasks / f["tasks"]) / 60
    note = f" ({len(finals)} runs together, {per_run:.1f} ms per run)" if len(finals) > 1 else ""
    lines.append(f"| {name}{note} | {acc} | {ms} | {f['eval_seconds']} | {projected:.1f} min |")
path = Path("reports/gpu") / f"{re.sub(r'[^a-z0-9]+', '-', card.lower()).strip('-')}-{datetime.date.today()}.md"
path.write_text("\n".join(lines) + "\n")
print(f"wrote {path}")
EOF
