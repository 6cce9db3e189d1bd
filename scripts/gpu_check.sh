#!/usr/bin/env bash
# The GPU check, on a machine with a CUDA GPU whose Python has torch: the CUDA tests, the speed table, timed
# runs of omniglot-5w1s Reptile with CUDA graphs, compiled and not, and the projected time of the full preset.
# Every step has its own time limit, which a step that runs over reports; the default steps' limits add up to
# 9 minutes. Measured on an H200 on 2026-11-28: the CUDA tests about 180 s on a fresh machine, the speed table
# 74 s, a compiled run 114 to 127 s (since then, not yet timed: a fourth run in one CUDA test, two compiled
# rows in the speed table, and a final evaluation that no longer compiles a second shape).
# It writes reports/gpu/<card>-<date>.md (and the raw outputs in OUT_DIR).
#
# Usage: scripts/gpu_check.sh [OUT_DIR]
#   BENCH_DATA   the data root holding omniglot/ (default: ./.gpu_data)
#   DEVICE       cuda (default); cpu only to try the script itself on a CPU machine
#   ITERS        meta-iterations of each timed run (default 3000)
#   EXTRA        further arguments of each timed run's `bench run` (say `--set eval_tasks=30` to try the
#                script on a CPU; the projection assumes the preset's evaluation settings)
#   PYTHON       the Python with torch (default: python3)
#   SPEED_ALGOS  the algorithms of the speed table (default: reptile,maml, the two the speed targets name)
#   SPEED_LIMIT  seconds the speed table may take (default 150; on a fresh machine its compiled rows compile
#                from an empty cache)
#   STEPS        the steps to run (default: tests,speed,compiled; the compiled variants in the order given):
#                tests: the CUDA tests; speed: the speed table; profile: the compiled, graphed rows of
#                omniglot-5w1s Reptile profiled (`bench speed --profile`); evaluation: `bench speed --evaluation`,
#                the evaluation protocols plain, with matrix-product convolutions and in bf16, uncompiled;
#                runs: the serial path and the batched one with CUDA graphs, uncompiled; compiled: the
#                preset's serial path compiled step by step and replayed from a CUDA graph, the fastest;
#                cl, matmul, evalmm, cudnn and tf32: that compiled run with channels_last = true,
#                conv_matmul = true, eval_matmul = true, cudnn_benchmark = true or autocast = "tf32"
#                (which changes results), and the combinations cl-evalmm, evalmm-cudnn, cl-evalmm-cudnn
#                and cl-evalmm-tf32 (the table VARIANT below); seeds: five seeds trained together.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/gpu_check}"
device="${DEVICE:-cuda}"
iters="${ITERS:-3000}"
py="${PYTHON:-python3}"
steps=",${STEPS:-tests,speed,compiled},"
want() { [[ "$steps" == *",$1,"* ]]; }
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

# 1. The CUDA tests (marker `gpu`): CUDA against the CPU, CUDA graphs against the plain path.
if want tests; then
  timeout 240 "$py" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py > "$out/pytest.txt" 2>&1
  echo "pytest exit $?" >> "$out/pytest.txt"
else
  echo "not run (STEPS)" > "$out/pytest.txt"
fi

# 2. The speed table: every algorithm and implementation side by side (--quick's one warm-up call,
#    then 6 rounds, the fewest that give each speed-up its 95% interval: a few seconds more on a GPU
#    than --quick's 2), the compiled rows of the cases that compile step by step included.
if want speed; then
  timeout "${SPEED_LIMIT:-150}" "$py" -m bench speed --device "$device" --quick --rounds 6 \
    --algos "${SPEED_ALGOS:-reptile,maml}" --out "$out/speed.csv" > "$out/speed.txt" 2>&1
  echo "speed exit $?" >> "$out/speed.txt"
else
  echo "not run (STEPS)" > "$out/speed.txt"
fi

# 2b. The evaluation speed table: each preset's evaluation of 100 tasks (a periodic evaluation's of one split), with the
#     library's convolutions (grouped ones under vmap) and as matrix products, uncompiled (the compiled
#     evaluation is timed by the compiled run below, whose periodic evaluations it runs).
if want evaluation; then
  timeout 50 "$py" -m bench speed --evaluation --device "$device" --quick --no-compiled \
    --out "$out/evaluation.csv" > "$out/evaluation.txt" 2>&1
  echo "evaluation exit $?" >> "$out/evaluation.txt"
else
  echo "not run (STEPS)" > "$out/evaluation.txt"
fi

# 2c. Where the fastest float32 steps spend their time: omniglot-5w1s Reptile's compiled and graphed rows under
#     torch.profiler, their kernels per meta-iteration and the costliest ones.
if want profile; then
  timeout 120 "$py" -m bench speed --profile --device "$device" --algos reptile \
    --implementations compiled-graph,compiled-graph-cl,compiled-graph-matmul --out "$out/profile.csv" \
    > "$out/profile.txt" 2>&1
  echo "profile exit $?" >> "$out/profile.txt"
else
  echo "not run (STEPS)" > "$out/profile.txt"
fi

# 3. Timed runs of omniglot-5w1s Reptile with the preset's own evaluation settings (a
#    periodic evaluation every 1,000 meta-iterations): the preset's serial path and the
#    batched path replayed from CUDA graphs (1,000 test tasks), the serial path compiled and
#    replayed (the preset's 10,000) with the settings of each variant asked for, and five
#    seeds trained together. Each is a process of its own, so cuDNN chooses its plans for it.
run() {  # name, timeout, then the arguments of `bench run`
  local name=$1 limit=$2; shift 2
  local t0; t0=$(date +%s.%N)
  echo "$name" >> "$out/runs.txt"
  timeout "$limit" "$py" -m bench run --algo reptile --device "$device" --results "$out/results-$name" \
    --no-progress --set meta_iters="$iters" "$@" ${EXTRA:-} > "$out/$name.json" 2> "$out/$name.err"
  echo "$?" > "$out/$name.rc"
  awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }' > "$out/$name.wall"
}
graph=(--set cuda_graph=true)
[ "$device" = cuda ] || graph=()
: > "$out/runs.txt"
if want runs; then
  run graph 60 "${graph[@]}" --set eval_tasks=1000
  run graph-batched 35 "${graph[@]}" --set batched=true --set eval_tasks=1000
fi
# The compiled variants: each step's settings beyond compile = true and cuda_graph = true. A compiled run
# compiles the training step once and the evaluation's step and scoring once (the periodic evaluations'
# 200 tasks, 100 per split adapted together; the final one reuses their chunk size).
declare -A VARIANT=(
  [compiled]=""
  [cl]="channels_last=true"
  [matmul]="conv_matmul=true"
  [evalmm]="eval_matmul=true"
  [cudnn]="cudnn_benchmark=true"
  [cl-evalmm]="channels_last=true eval_matmul=true"
  [evalmm-cudnn]="eval_matmul=true cudnn_benchmark=true"
  [cl-evalmm-cudnn]="channels_last=true eval_matmul=true cudnn_benchmark=true"
  [tf32]="autocast=tf32"
  [cl-evalmm-tf32]="channels_last=true eval_matmul=true autocast=tf32"
)
for step in ${steps//,/ }; do
  [ -n "${VARIANT[$step]+set}" ] || continue
  name=compiled-graph; limit=150
  [ "$step" = compiled ] || { name=compiled-graph-$step; limit=180; }
  settings=()
  for kv in ${VARIANT[$step]}; do settings+=(--set "$kv"); done
  run "$name" "$limit" "${graph[@]}" --set compile=true "${settings[@]}"
done
want seeds && run seeds 90 "${graph[@]}" --seeds 0-4 --batch-seeds --set eval_tasks=1000

"$py" - "$out" "$card" "$iters" "$(( $(date +%s) - start ))" <<'EOF'
"""reports/gpu/<card>-<date>.md from the outputs of scripts/gpu_check.sh."""
import csv, datetime, json, re, sys
from pathlib import Path

from bench.speed import rate_text, speedup_text

out, card, iters, seconds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
full_iters, full_tasks = 100_000, 10_000
lines = [f"# GPU check on {card}, {datetime.date.today()}", "",
         f"`scripts/gpu_check.sh`, {seconds} s in all.", "", "```", (out / "gpu.txt").read_text().strip(), "```", "",
         "## Tests", "", "```", "\n".join((out / "pytest.txt").read_text().strip().splitlines()[-4:]), "```", "",
         "## Speed (`python -m bench speed --quick --rounds 6`), ms per meta-iteration, the rate of its "
         "arithmetic (in brackets: its share of the card's float32 matrix-product rate), speed-ups with their 95% "
         "intervals", ""]
if (out / "speed.csv").is_file():
    with open(out / "speed.csv") as f:
        rows = list(csv.DictReader(f))
    lines += ["| algorithm | preset | implementation | ms | first call s | peak MiB | GFLOP/s | x naive "
              "| x learn2learn |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['algo']} | {r['preset']} | {r['implementation']} | {r['ms_per_meta_iter']} | {r['first_call_s']} | "
              f"{r['peak_mem_mb']} | {rate_text(r)} | {speedup_text(r, 'speedup_vs_naive')} | "
              f"{speedup_text(r, 'speedup_vs_learn2learn')} |" for r in rows]
    if rows:
        lines += ["", f"The card's float32 matrix product ({rows[0]['matmul_form']}): "
                      f"{rows[0]['matmul_gflop_per_s']} GFLOP/s."]
else:
    lines += ["No table: " + (out / "speed.txt").read_text().strip().splitlines()[-1]]
lines += ["", "## Evaluation (`python -m bench speed --evaluation --quick --no-compiled`), ms per test task", ""]
if (out / "evaluation.csv").is_file():
    with open(out / "evaluation.csv") as f:
        rows = list(csv.DictReader(f))
    lines += ["| preset | implementation | tasks | ms / task | first call s | x plain |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['preset']} | {r['implementation']} | {r['tasks']} | {r['ms_per_task']} | {r['first_call_s']} | "
              f"{speedup_text(r, 'speedup_vs_plain')} |" for r in rows]
else:
    lines += ["No table: " + ((out / "evaluation.txt").read_text().strip().splitlines() or ["(empty)"])[-1]]
lines += ["", "## Profile (`python -m bench speed --profile --algos reptile --implementations compiled-graph,"
          "compiled-graph-cl,compiled-graph-matmul`), kernels per meta-iteration", "", "```",
          (out / "profile.txt").read_text().strip(), "```"]
lines += ["", f"## omniglot-5w1s Reptile, {iters:,} meta-iterations", "",
          "The preset's settings (a periodic evaluation of 100 tasks per split every 1,000 meta-iterations) with "
          "`cuda_graph = true`. The projection scales each part to the full preset: meta-training to 100,000 "
          "meta-iterations at the steady rate of its logged training clock (after its first log, whose time holds "
          "the one-off compilation and the graph's recording), the periodic evaluations to 99 at the time of the "
          "last one (the first one's surplus, its compilation, counted once), the final "
          "evaluation to 10,000 test tasks, plus the run's own start-up (the rest of its wall-clock time: "
          "imports, data).", "",
          "| run | accuracy | ms / meta-iteration, steady (overall) | periodic eval. s (count) | final eval. s (tasks) | start-up s "
          "| wall s | projected full preset |",
          "|---|---|---|---|---|---|---|---|"]
periodic_full = full_iters // 1000 - 1


def described(name: str) -> str:
    """What the run `name` ran, from its config.json."""
    try:
        cfg = json.loads(next((out / f"results-{name}").glob("*/*/seed*/config.json")).read_text())
    except (StopIteration, OSError, ValueError):
        return name
    parts = ["5 seeds together" if name == "seeds" else "batched path" if cfg["batched"] else "serial path"]
    parts += [what for key, what in (("compile", "compiled"), ("cuda_graph", "CUDA graph"),
                                     ("channels_last", "channels-last"), ("conv_matmul", "conv_matmul"),
                                     ("eval_matmul", "eval_matmul"), ("cudnn_benchmark", "cudnn_benchmark"))
              if cfg.get(key)]
    if cfg.get("autocast", "off") != "off":
        parts.append(f"{cfg['autocast'].upper()} (changes results)")
    return ", ".join(parts)


for name in (out / "runs.txt").read_text().split():
    label = described(name)
    if not (out / f"{name}.rc").is_file():
        continue  # not run (STEPS)
    rc = (out / f"{name}.rc").read_text().strip()
    try:
        finals = json.loads((out / f"{name}.json").read_text())
        wall = float((out / f"{name}.wall").read_text())
    except (OSError, ValueError):
        err = (out / f"{name}.err").read_text().strip().splitlines() if (out / f"{name}.err").is_file() else []
        lines.append(f"| {label} | failed (exit {rc}{': ' + err[-1][:160] if err else ''}) | | | | | | |")
        continue
    finals = finals if isinstance(finals, list) else [finals]
    f = finals[0]
    acc = ", ".join(f"{x['value']:.4f}" for x in finals)
    every = json.loads(next((out / f"results-{name}").glob("*/*/seed*/config.json")).read_text())["eval_every"]
    n_periodic = (iters - 1) // every if every else 0
    train = f["train_seconds"]
    periodic = sum(x["periodic_eval_seconds"] for x in finals)
    # the periodic evaluations at the steady time of the latest one; the first one's surplus
    # (compilation: the compiled evaluation's step and scoring) paid once
    last = sum(x.get("periodic_eval_last_seconds", 0.0) for x in finals) or periodic / max(n_periodic, 1)
    one_off = max(periodic - n_periodic * last, 0.0)
    final_eval = sum(x["eval_seconds"] for x in finals)
    startup = max(wall - train - periodic - final_eval, 0.0)
    # meta-training at its steady rate, read off the logged training clock after the first
    # log (whose time holds the compilation and the graph's recording, paid once)
    with open(next((out / f"results-{name}").glob("*/*/seed*/metrics.csv"))) as m:
        clock = [(int(r["step"]), float(r["wall_s"])) for r in csv.DictReader(m) if r["metric"] == "loss"]
    (s0, w0), (s1, w1) = clock[0], clock[-1]
    rate = (w1 - w0) / (s1 - s0) if s1 > s0 else train / iters
    projected = (train + rate * (full_iters - iters) + (one_off + last * periodic_full if n_periodic else 0)
                 + final_eval * full_tasks / f["tasks"] + startup)
    note = f" ({len(finals)} runs: {projected / len(finals) / 60:.1f} min per run)" if len(finals) > 1 else ""
    lines.append(f"| {label} | {acc} | {rate * 1e3:.2f} ({f['ms_per_meta_iter']}) | {periodic:.1f} ({n_periodic}; the last {last:.1f}) | "
                 f"{final_eval:.1f} ({f['tasks']:,}) | {startup:.1f} | {wall:.1f} | {projected / 60:.1f} min{note} |")
path = Path("reports/gpu") / f"{re.sub(r'[^a-z0-9]+', '-', card.lower()).strip('-')}-{datetime.date.today()}.md"
path.write_text("\n".join(lines) + "\n")
print(f"wrote {path}")
EOF
