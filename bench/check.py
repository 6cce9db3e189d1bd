"""`python -m bench check`: the CI regression check, small seeded runs against a reference.

A fixed list of small runs (`RUNS`: the sine task, and Omniglot 5-way 1-shot for every
algorithm, reduced by overrides) goes through the real harness (`bench.runner.run`) on
the CPU with seed 0, into a temporary folder, and each final metric (test accuracy or
MSE) is compared with its band in `results/reference/check.json`. A result outside its
band exits 1 and names the run that moved; `--set key=value` applies to every run, so
a change that cripples learning (e.g. `--set inner_lr=1e-6`) fails the check.

The reference is made by running every check run with several seeds:

    python -m bench check --regenerate --seeds 0-4

and records, per run, its settings, the per-seed values, their mean and standard
deviation (n - 1), and the band: mean +- max(K * std, FLOOR * |mean|), widened where
needed to hold every reference seed. K = 4 (a fresh seed of the same code falls
outside it about 2% of the time with five seeds: a Student-t tail); the relative floor
FLOOR = 0.02 allows the small float drift of another torch version or CPU when the
seeds happen to agree closely. On the CPU a given torch version reproduces a run
exactly, so the check's seed-0 runs land on the reference's seed-0 values, which the
band holds by construction (another thread count sums in another order: a relative
drift of about 1e-4 on the sine task; torch 2.14.1 gave 2.13.0's values to four decimals).
Regenerate whenever a change of results is intended.

Exit codes: 0 every run inside its band; 1 a run moved (`CheckFailed`, naming each);
2 bad input (an unknown run, a missing, corrupt or stale reference file). The whole
check takes about 2.5 minutes on two CPU cores, the reference about 13.
"""

from __future__ import annotations

import contextlib
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BenchError, ConfigError

K = 4.0
"""Band half-width in standard deviations over the reference seeds."""
FLOOR = 0.02
"""Smallest band half-width, as a fraction of the reference mean."""
CHECK_SEED = 0
"""The seed of a check (the reference must include it)."""
REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "check.json"
REGENERATE = "python -m bench check --regenerate --seeds 0-4"


@dataclass(frozen=True)
class CheckRun:
    """One run of the check: a preset, an algorithm and the overrides that shrink it."""

    name: str
    preset: str
    algo: str
    overrides: dict[str, str]


# Sine: 1,000 of the preset's 30,000 meta-iterations, with the outer step size of the
# Omniglot preset (1, annealed to 0) instead of 0.1 so that so few iterations learn:
# Reptile's test MSE falls to about a quarter of joint training's (a model that does not
# adapt scores about 4.2, the mean of amplitude^2 / 2); 1,000 test tasks. About 5 s per
# run on two cores.
SINE = {"meta_iters": "1000", "meta_lr": "1.0", "eval_tasks": "1000", "eval_every": "0", "snapshots": "0"}
# Omniglot 5-way 1-shot with the preset's settings for each algorithm (its per-algorithm
# outer step sizes and query), 100 of its 100,000 meta-iterations, 10 of its 50
# fine-tuning steps at test, 200 test tasks: Reptile, FOMAML and MAML reach about 55%,
# joint training about 36%, chance 20%. About 10 s (joint) to 75 s (MAML) on two cores.
OMNIGLOT = {"meta_iters": "100", "eval_tasks": "200", "eval_steps": "10", "eval_every": "0", "snapshots": "0"}

RUNS: tuple[CheckRun, ...] = (
    CheckRun("sine-reptile", "sine", "reptile", SINE),
    CheckRun("sine-joint", "sine", "joint", SINE),
    *(CheckRun(f"omniglot-5w1s-{algo}", "omniglot-5w1s", algo, OMNIGLOT)
      for algo in ("reptile", "fomaml", "maml", "joint")),
)


class CheckFailed(BenchError):
    """A check run's result left its reference band (exit code 1)."""

    exit_code = 1


# --- the band (pure helpers) ---------------------------------------------------------

def band(values: list[float], k: float = K, floor: float = FLOOR) -> dict[str, Any]:
    """Mean, sample std and the band [low, high] = mean +- max(k * std, floor * |mean|),
    widened to hold every value."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    half = max(k * std, floor * abs(mean))
    return {"mean": mean, "std": std, "band": [min(mean - half, *values), max(mean + half, *values)]}


def inside(value: float, limits: list[float]) -> bool:
    return limits[0] <= value <= limits[1]


def parse_seeds(spec: str) -> list[int]:
    """The reference's seeds ("0-4", "0,1,2"), sorted: 3 or more, the check's among them."""
    from .sweep import parse_seeds as seeds_of

    seeds = sorted(seeds_of(spec))
    if len(seeds) < 3 or CHECK_SEED not in seeds:
        raise ConfigError(f"--seeds {spec!r}: the reference needs 3 or more seeds including {CHECK_SEED} "
                          "(the check's seed), e.g. --seeds 0-4")
    return seeds


def select_runs(spec: str | None) -> list[CheckRun]:
    """The check runs named in `spec` ("a,b"), all when None."""
    if spec is None:
        return list(RUNS)
    from .config import parse_names

    by_name = {r.name: r for r in RUNS}
    return [by_name[n] for n in parse_names("--runs", spec, list(by_name), "check run")]


# --- the reference file -------------------------------------------------------------

def _shown(path: Path) -> str:
    """`path` relative to the working folder when it lies below it (as messages show it)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def regenerate_command(path: Path) -> str:
    """The command that remakes the reference file at `path`."""
    if path.resolve() == REFERENCE:
        return REGENERATE
    return f"{REGENERATE} --reference {shlex.quote(_shown(path))}"


def read_reference(path: Path, runs: list[CheckRun]) -> dict[str, Any]:
    """The reference file, checked to hold a well-formed entry, made with today's
    settings, for each of `runs`; else a one-line BenchError."""
    fix = f"regenerate it with `{regenerate_command(path)}`"
    if not path.is_file():
        other = " (or pass --reference PATH)" if path.resolve() == REFERENCE else ""
        raise BenchError(f"reference file {_shown(path)} not found: {fix}{other}")
    try:
        ref = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchError(f"reference file {_shown(path)} is unreadable ({' '.join(str(e).split())}): {fix}")
    entries = ref.get("runs") if isinstance(ref, dict) else None
    if not isinstance(entries, dict):
        raise BenchError(f"reference file {_shown(path)} has no 'runs' table: {fix}")
    for r in runs:
        entry = entries.get(r.name)
        if not isinstance(entry, dict):
            raise BenchError(f"reference file {_shown(path)} has no entry for {r.name}: {fix}")
        limits = entry.get("band")
        if not (isinstance(limits, list) and len(limits) == 2 and all(isinstance(v, (int, float)) for v in limits)
                and limits[0] <= limits[1] and isinstance(entry.get("metric"), str)):
            raise BenchError(f"reference file {_shown(path)}: the entry for {r.name} has no valid 'band' "
                             f"[low, high] and 'metric': {fix}")
        made = {"preset": entry.get("preset"), "algo": entry.get("algo"), "overrides": entry.get("overrides")}
        if made != {"preset": r.preset, "algo": r.algo, "overrides": r.overrides}:
            raise BenchError(f"reference file {_shown(path)}: {r.name} was made with other settings than "
                             f"bench/check.py's ({made}): {fix}")
    return ref


def write_reference(path: Path, ref: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(ref, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


# --- running -------------------------------------------------------------------------

def run_one(check_run: CheckRun, seed: int, extra: dict[str, str], results: Path,
            data: str | None) -> dict[str, Any]:
    """One check run through the harness on the CPU; returns its final.json."""
    from .config import load_config
    from .runner import run

    overrides = {**check_run.overrides, **extra}
    cfg = load_config(check_run.preset, overrides, algo=check_run.algo)
    return run(cfg, algo=check_run.algo, preset=check_run.preset, seed=seed, results=results, data=data,
               device="cpu", progress=False, overrides=overrides, checkpoint_every=str(cfg.meta_iters))


def _check_inputs(runs: list[CheckRun], extra: dict[str, str], keep: str | None) -> None:
    """Every run's settings valid and no --keep folder taken, before the first run starts."""
    from .config import load_config
    from .runner import check_algorithm_settings

    for r in runs:
        cfg = load_config(r.preset, {**r.overrides, **extra}, algo=r.algo)
        check_algorithm_settings(cfg, r.algo)
        if keep is not None and (Path(keep) / r.name).exists():
            raise ConfigError(f"--keep {keep}: {Path(keep) / r.name} already exists: remove it or choose another "
                              "folder")


@contextlib.contextmanager
def _folders(keep: str | None, runs: list[CheckRun]):
    """Where each run writes, as name -> folder: `keep/<run name>`, else a temporary
    folder removed afterwards."""
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
            yield {r.name: Path(tmp) / r.name for r in runs}
    else:
        yield {r.name: Path(keep) / r.name for r in runs}


def _count(runs: list) -> str:
    return f"{len(runs)} run" + ("" if len(runs) == 1 else "s")


def _row(cells: list[str]) -> str:
    widths = (24, 9, 10, 22, 6, 7)
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()


def check(runs: list[CheckRun], reference: Path, extra: dict[str, str], data: str | None,
          keep: str | None) -> list[str]:
    """Run `runs` with the check's seed and print a table; returns the messages of the runs
    that moved (empty when every result lies inside its band)."""
    import torch

    ref = read_reference(reference, runs)
    _check_inputs(runs, extra, keep)
    if ref.get("torch") != torch.__version__:
        print(f"note: the reference was made with torch {ref.get('torch')}, this is torch {torch.__version__}: "
              "results may drift a little", file=sys.stderr)
    moved = []
    print(f"check: {_count(runs)}, seed {CHECK_SEED}, cpu, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads" + "".join(f", --set {k}={v}" for k, v in extra.items()))
    print(_row(["run", "metric", "value", "band", "status", "seconds"]))
    t_all = time.perf_counter()
    with _folders(keep, runs) as folders:
        for r in runs:
            entry = ref["runs"][r.name]
            t0 = time.perf_counter()
            final = run_one(r, CHECK_SEED, extra, folders[r.name], data)
            value, limits = final["value"], entry["band"]
            ok = final["metric"] == entry["metric"] and inside(value, limits)
            print(_row([r.name, final["metric"], f"{value:.4f}", f"[{limits[0]:.4f}, {limits[1]:.4f}]",
                        "ok" if ok else "MOVED", f"{time.perf_counter() - t0:.0f}"]), flush=True)
            if not ok:
                moved.append(f"{r.name} moved: {final['metric']} {value:.4f} is outside its reference band "
                             f"[{limits[0]:.4f}, {limits[1]:.4f}]")
    print(f"{len(runs) - len(moved)} of {len(runs)} inside their bands in {time.perf_counter() - t_all:.0f} s")
    return moved


def regenerate(runs: list[CheckRun], seeds: list[int], reference: Path, data: str | None,
               keep: str | None, command: str) -> dict[str, Any]:
    """Run `runs` for every seed and write their entries (others already in the file are
    kept when they were made with the same torch version)."""
    import numpy as np
    import torch

    _check_inputs(runs, {}, keep)
    old: dict[str, Any] = {}
    if len(runs) < len(RUNS) and reference.is_file():
        with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError):
            old = json.loads(reference.read_text())
        if not (isinstance(old, dict) and isinstance(old.get("runs"), dict)):
            raise ConfigError(f"{_shown(reference)} is unreadable or has no 'runs' table: regenerate every run "
                              "(drop --runs)")
        if old.get("torch") != torch.__version__:
            raise ConfigError(f"{_shown(reference)} was made with torch {old.get('torch')}, this is torch "
                              f"{torch.__version__}: regenerate every run (drop --runs)")
    entries = {k: v for k, v in old.get("runs", {}).items() if k in {r.name for r in RUNS}}
    print(f"regenerate: {_count(runs)} x seeds {seeds}, cpu, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    t_all = time.perf_counter()
    with _folders(keep, runs) as folders:
        for r in runs:
            values, metric = {}, None
            for seed in seeds:
                t0 = time.perf_counter()
                final = run_one(r, seed, {}, folders[r.name], data)
                values[str(seed)], metric = final["value"], final["metric"]
                print(f"{r.name} seed {seed}: {metric} {final['value']:.4f} ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
            stats = band(list(values.values()))
            entries[r.name] = {"preset": r.preset, "algo": r.algo, "overrides": r.overrides, "metric": metric,
                               "seeds": values, **stats}
            print(f"{r.name}: mean {stats['mean']:.4f}, std {stats['std']:.4f}, band "
                  f"[{stats['band'][0]:.4f}, {stats['band'][1]:.4f}]", flush=True)
    ref = {
        "about": "Reference results of `python -m bench check` (bench/check.py): per check run, its final "
                 "metric for each seed, their mean and sample std, and the band mean +- max(k * std, "
                 "floor * |mean|), widened to hold every seed.",
        "command": command, "k": K, "floor": FLOOR, "check_seed": CHECK_SEED,
        "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(), "runs": dict(sorted(entries.items())),
    }
    write_reference(reference, ref)
    print(f"wrote {_shown(reference)} in {time.perf_counter() - t_all:.0f} s")
    return ref


# --- the command line ----------------------------------------------------------------

def add_parser(sub) -> None:
    c = sub.add_parser("check", help="CI regression check: small seeded CPU runs against results/reference/")
    c.add_argument("--runs", default=None, metavar="NAME,NAME",
                   help="comma-separated check runs (default: all of " + ", ".join(r.name for r in RUNS) + ")")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting in every run, e.g. --set inner_lr=1e-6 (repeatable)")
    c.add_argument("--data", default=None, help="data root (default: $BENCH_DATA, else a per-user cache)")
    c.add_argument("--keep", default=None, metavar="DIR",
                   help="keep the run folders under DIR/<run name>/ (default: a temporary folder)")
    c.add_argument("--reference", default=None, metavar="PATH",
                   help="reference file (default: results/reference/check.json in the checkout)")
    c.add_argument("--regenerate", action="store_true",
                   help="run every check run for --seeds and write the reference file instead of checking")
    c.add_argument("--seeds", default="0-4", help="seeds of --regenerate, e.g. 0-4 or 0,1,2 (default 0-4)")


def main_check(args) -> int:
    """Exit 0 when every run lies inside its band; a moved run raises CheckFailed (exit 1);
    bad input (an unknown run, a missing or corrupt reference) raises BenchError (exit 2)."""
    from .config import parse_overrides

    runs = select_runs(args.runs)
    extra = parse_overrides(args.overrides)
    reference = Path(args.reference) if args.reference else REFERENCE
    if args.regenerate:
        if extra:
            raise ConfigError("--set does not apply to --regenerate: the reference is made with the check runs' own "
                              "settings (change them in bench/check.py)")
        seeds = parse_seeds(args.seeds)
        command = " ".join(["python -m bench check --regenerate", f"--seeds {args.seeds}",
                            *([f"--runs {args.runs}"] if args.runs else []),
                            *([f"--reference {shlex.quote(args.reference)}"] if args.reference else [])])
        regenerate(runs, seeds, reference, args.data, args.keep, command)
        return 0
    moved = check(runs, reference, extra, args.data, args.keep)
    if moved:
        raise CheckFailed("; ".join(moved) + f" ({_shown(reference)}; regenerate with "
                          f"`{regenerate_command(reference)}` if the change is intended)")
    return 0
