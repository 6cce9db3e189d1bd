"""`python -m bench sweep`: many runs, unattended, on one machine or a Ray cluster.

A sweep is a list of jobs, each one run (preset, algorithm, seed, overrides), and
each job is exactly the command a person would type: `python -m bench run ...
--resume`, in a process of its own, its output in
`<results>/logs/<preset>/<method>/seed<k>.log`. `--resume` makes every job safe to
start again: a finished run is left alone, an unfinished one continues from its
checkpoint, a missing one starts. So rerunning a sweep after a crash, a
preemption or a Ctrl-C finishes what is left and repeats nothing. A run that differs
from another of the sweep only in evaluation settings (`Job.source`: `bench reproduce`'s
"Reptile + transduction") is made by `python -m bench evaluate` of that run, right
after its training in the same job, not by a second meta-training.

Before anything runs, every job's settings are checked (a bad one stops the sweep
with one line and no file written), and every existing run folder is compared
with its job: a run made with other settings is refused, never overwritten.

Local workers (`--workers N`) share the machine: on the CPU each run gets
cores / N threads; with a GPU every run uses it. With `--ray [ADDRESS]` the same
jobs run as Ray tasks on a Ray cluster (a local one started on the fly when no
address is given), each claiming `--cpus-per-run` CPUs and, where the runs use a
GPU, `--gpu-fraction` of one; every node must have the suite installed and see
the results folder at the same path (a shared file system).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import load_config, parse_overrides
from .errors import BenchError
from .fast import with_fast
from .results import FAILED, FINISHED, has_run, read_state, run_dir, run_method


@dataclass(frozen=True)
class Job:
    """One run of a sweep."""

    preset: str
    algo: str
    seed: int
    overrides: tuple[tuple[str, str], ...] = ()
    """`--set` values, in order."""
    source: "Job | None" = None
    """A job whose run differs from this one's only in evaluation settings (the Reptile
    paper's "Reptile" for its "Reptile + transduction"): this run is then made by scoring
    that one's again (`bench evaluate`), not by meta-training it a second time, when its
    folder holds no run yet (`rescores`)."""

    @property
    def settings(self) -> dict[str, str]:
        return dict(self.overrides)

    def config(self):
        return load_config(self.preset, self.settings, algo=self.algo)

    def folder(self, results: Path) -> Path:
        return run_dir(results, self.preset, run_method(self.algo, self.config(), self.preset), self.seed)

    def name(self, results: Path) -> str:
        return self.folder(results).relative_to(results).as_posix()

    def rescores(self, results: Path) -> bool:
        """Whether the sweep makes this run by scoring its source's again: it has a source
        and its folder holds no run (a run there, even unfinished, is resumed as it is)."""
        return self.source is not None and not has_run(self.folder(results))

    def rescore_argv(self, options: "Options") -> list[str]:
        """`python -m bench evaluate` of the source's run with the settings in which this
        job differs from it, into this job's folder."""
        assert self.source is not None
        source = self.source.settings
        sets = [a for k, v in self.overrides if source.get(k) != v for a in ("--set", f"{k}={v}")]
        extra = [*(["--data", options.data] if options.data else []),
                 *(["--device", options.device] if options.device else [])]
        return [sys.executable, "-m", "bench", "evaluate", str(self.source.folder(options.results)), *sets,
                "--out", str(self.folder(options.results)), *extra, "--eval-protocol", options.eval_protocol,
                "--no-progress"]

    def argv(self, options: "Options", seeds: list[int] | None = None) -> list[str]:
        """The job's command; with `seeds`, the command that trains those seeds of the same
        preset, algorithm and settings together (`--seeds ... --batch-seeds`)."""
        sets = [a for k, v in self.overrides for a in ("--set", f"{k}={v}")]
        which = (["--seeds", ",".join(map(str, seeds)), "--batch-seeds"] if seeds
                 else ["--seed", str(self.seed)])
        extra = [*(["--data", options.data] if options.data else []),
                 *(["--device", options.device] if options.device else [])]
        return [sys.executable, "-m", "bench", "run", "--algo", self.algo, "--preset", self.preset,
                *which, *sets, "--results", str(options.results), *extra,
                "--eval-protocol", options.eval_protocol, "--checkpoint-every", options.checkpoint_every,
                *(["--fast"] if options.fast else []), "--resume", "--no-progress"]


@dataclass(frozen=True)
class Options:
    """What every job of a sweep shares."""

    results: Path
    data: str | None = None
    device: str | None = None
    eval_protocol: str = "shared"
    checkpoint_every: str = "60s"
    batch_seeds: bool = False
    """Train the seeds of each (preset, algorithm, settings) together, as one job."""
    fast: bool = False
    """Every run with `--fast` (the execution settings measured fastest for its device)."""


def parse_seeds(text: str) -> list[int]:
    """"0-4", "0,2,5" or "0-2,7" -> the seeds, in order, each once."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            seeds += range(int(lo), int(hi) + 1) if sep else [int(lo)]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise BenchError(f"--seeds {text!r} is not a list of seeds: e.g. --seeds 0-4 or --seeds 0,2,5")
    return list(dict.fromkeys(seeds))


def plan(presets: list[str], algos: list[str], seeds: list[int], overrides: dict[str, str]) -> list[Job]:
    """The product of presets, algorithms and seeds as jobs."""
    items = tuple(overrides.items())
    return [Job(p, a, s, items) for p in presets for a in algos for s in seeds]


def check_jobs(jobs: list[Job], options: Options) -> None:
    """Every job's settings, and every run folder already there, checked before any job
    starts (reads only). Raises a one-line BenchError naming the job."""
    # Imported here: they import torch, and `python -m bench presets` stays instant.
    from .checkpoint import config_differences
    from .runner import preflight, resolve_device, run_identity

    device = resolve_device(options.device)
    seen: dict[Path, Job] = {}
    for job in jobs:
        cfg = job.config()
        if options.fast and not job.rescores(options.results):  # as `run --fast` will resolve them
            cfg = load_config(job.preset, with_fast(job.settings, cfg, job.algo, device.type, options.batch_seeds)[0],
                              algo=job.algo)
        try:
            evals = preflight(cfg, job.algo, options.eval_protocol)
        except BenchError as e:
            raise BenchError(f"{job.preset} {job.algo} seed {job.seed}: {e}") from None
        folder = job.folder(options.results)
        if folder in seen:
            raise BenchError(f"two jobs write {folder}: {seen[folder]} and {job}; remove one")
        seen[folder] = job
        identity = run_identity(cfg, algo=job.algo, preset=job.preset, seed=job.seed, device=device, evals=evals)
        if diffs := config_differences(folder, identity):  # unreadable (None): `run --resume` says why
            raise BenchError(f"{folder} holds a run made with other settings ({', '.join(diffs[:3])}): "
                             "sweep into another --results folder, or remove that run")


def execute(commands: list[list[str]], log: str, threads: int | None) -> dict[str, Any]:
    """Run a unit's commands one after another, their output appended to `log`, until one
    fails; the last exit code and the last line it printed on stderr. Module-level, so
    Ray can ship it to any node."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if threads:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    start = time.monotonic()
    with open(log, "ab") as out:
        for argv in commands:
            out.write(f"$ {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.PIPE, env=env)
            out.write(proc.stderr)
            if proc.returncode:
                break
    lines = [line for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    return {"returncode": proc.returncode, "message": (errors or lines or [""])[-1],
            "seconds": time.monotonic() - start}


@dataclass(frozen=True)
class Unit:
    """What one sequence of processes does: train `jobs` (one job, or with --batch-seeds the
    seeds of one preset, algorithm and settings, together), then make the `rescored` runs
    by scoring theirs again (`Job.source`)."""

    jobs: tuple[Job, ...]
    rescored: tuple[Job, ...] = ()

    @property
    def all_jobs(self) -> tuple[Job, ...]:
        return self.jobs + self.rescored

    def commands(self, options: Options) -> list[list[str]]:
        train = []
        if self.jobs:
            seeds = [job.seed for job in self.jobs] if len(self.jobs) > 1 else None
            train = [self.jobs[0].argv(options, seeds)]
        return train + [job.rescore_argv(options) for job in self.rescored]

    def log(self, options: Options) -> str:
        first = self.all_jobs[0]
        name = first.name(options.results)
        if len(self.jobs) > 1:  # <preset>/<method>/seeds0,1,2
            name = f"{name.rsplit('/', 1)[0]}/seeds{','.join(str(job.seed) for job in self.jobs)}"
        return str(options.results / "logs" / f"{name}.log")


def units(jobs: list[Job], options: Options) -> list[Unit]:
    """The jobs as units: each run to train alone or, with batch_seeds, with the other seeds
    of its preset, algorithm and settings; each run made by rescoring (`Job.rescores`)
    after its source's training, or alone when its source is not in `jobs` (finished)."""
    rescored = [job for job in jobs if job.rescores(options.results)]
    trained = [job for job in jobs if job not in rescored]
    groups: dict[tuple, list[Job]] = {}
    for job in trained:
        key = (job.preset, job.algo, job.overrides) + (() if options.batch_seeds else (job.seed,))
        groups.setdefault(key, []).append(job)
    after: dict[Job, list[Job]] = {}
    alone = []
    for job in rescored:
        (after.setdefault(job.source, []) if job.source in trained else alone).append(job)
    out = [Unit(tuple(group), tuple(r for job in group for r in after.get(job, ()))) for group in groups.values()]
    return out + [Unit((), (job,)) for job in alone]


def _run_local(todo: list[Unit], options: Options, workers: int):
    threads = None
    if options.device != "cuda":
        threads = max(1, (os.cpu_count() or 1) // workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(execute, unit.commands(options), unit.log(options), threads): unit
                   for unit in todo}
        for future in as_completed(futures):
            yield futures[future], future.result()


def _run_ray(todo: list[Unit], options: Options, address: str | None, cpus: float, gpu_fraction: float):
    try:
        import ray
    except ImportError:
        raise BenchError("--ray needs Ray: pip install 'ray>=2.9' (or install the suite with its [ray] extra)") \
            from None
    started = not ray.is_initialized()
    if started:
        kwargs = {"address": address} if address else {"include_dashboard": False}
        try:
            ray.init(log_to_driver=False, **kwargs)
        except Exception as e:  # an unreachable address, a version mismatch: one line
            raise BenchError(f"cannot reach the Ray cluster at {address or 'a new local one'} "
                             f"({type(e).__name__}: {' '.join(str(e).split())[:200]}): check --ray ADDRESS") from None
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        wants_gpu = options.device == "cuda" or (options.device is None and gpus > 0)
        task = ray.remote(num_cpus=cpus, num_gpus=gpu_fraction if wants_gpu else 0)(execute)
        threads = max(1, int(cpus))
        refs = {task.remote(unit.commands(options), unit.log(options), threads): unit for unit in todo}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield refs[done[0]], ray.get(done[0])
    finally:
        if started:
            ray.shutdown()


def run_sweep(jobs: list[Job], options: Options, *, workers: int = 1, ray_address: str | None = None,
              use_ray: bool = False, cpus_per_run: float = 1.0, gpu_fraction: float = 0.25,
              echo=print) -> list[dict[str, Any]]:
    """Check every job, then run them; returns one summary per job (name, state,
    message, seconds), in the order they ended."""
    options = Options(Path(options.results).resolve(), options.data, options.device, options.eval_protocol,
                      options.checkpoint_every, options.batch_seeds, options.fast)
    check_jobs(jobs, options)
    todo = []
    for job in jobs:
        state = read_state(job.folder(options.results))
        if state and state.get("state") == FINISHED:
            echo(f"[skip] {job.name(options.results)}: finished")
        else:
            todo.append(job)
    if not todo:
        return []
    echo(f"{len(todo)} of {len(jobs)} runs to do ({len(jobs) - len(todo)} finished already); "
         f"logs in {options.results / 'logs'}")
    todo_units = units(todo, options)
    runner = (_run_ray(todo_units, options, ray_address, cpus_per_run, gpu_fraction) if use_ray
              else _run_local(todo_units, options, max(1, workers)))
    summaries = []
    for unit, result in runner:
        for job in unit.all_jobs:
            state = read_state(job.folder(options.results)) or {}
            name = job.name(options.results)
            ok = result["returncode"] == 0 and state.get("state") == FINISHED
            summary = {"run": name, "state": FINISHED if ok else state.get("state", FAILED),
                       "message": "" if ok else state.get("message") or result["message"]
                       or f"exit code {result['returncode']}", "seconds": round(result["seconds"], 1)}
            summaries.append(summary)
            echo(f"[{len(summaries)}/{len(todo)}] {name}: {summary['state']} in {summary['seconds']:.0f} s"
                 + (f" ({summary['message']})" if summary["message"] else ""))
    return summaries


def add_options(p: argparse.ArgumentParser) -> None:
    """The options `sweep` and `reproduce` share."""
    p.add_argument("--seeds", default="0", help="seeds, e.g. 0-4 or 0,2,5 (default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting in every run (repeatable)")
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument("--data", default=None, help="data root (default: $BENCH_DATA, else a per-user cache)")
    p.add_argument("--device", default=None, choices=("cpu", "cuda"), help="default: cuda when present")
    p.add_argument("--eval-protocol", default="shared", choices=("shared", "own", "both"))
    p.add_argument("--checkpoint-every", default="60s", metavar="N|Ns|Nm")
    p.add_argument("--workers", type=int, default=1, help="runs at once on this machine (default 1)")
    p.add_argument("--fast", action="store_true",
                   help="every run with --fast: the execution settings measured fastest for its device and path")
    p.add_argument("--batch-seeds", action="store_true",
                   help="train the seeds of each algorithm together, in one process and one computation "
                        "(run --seeds ... --batch-seeds): fewer, larger jobs, for a GPU")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the jobs as Ray tasks: on the cluster at ADDRESS, or a local one started now")
    p.add_argument("--status", action="store_true",
                   help="print where each of these runs stands (not started, running, stopped, finished, failed; "
                        "as `python -m bench status`) and stop")
    p.add_argument("--json", action="store_true", help="with --status: one JSON object per run")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="Ray: CPUs each run claims (default 1)")
    p.add_argument("--gpu-fraction", type=float, default=0.25,
                   help="Ray: the fraction of a GPU each run claims where runs use a GPU (default 0.25)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sweep", help="run every algorithm x seed of a preset as separate runs "
                                            "(skips finished ones, resumes unfinished ones)")
    p.add_argument("--preset", default="omniglot-5w1s", help="preset name (see `presets`)")
    p.add_argument("--algos", default="reptile", help="comma-separated algorithms, e.g. reptile,fomaml,maml,joint")
    add_options(p)
    return p


def options_from(args: argparse.Namespace) -> Options:
    if args.workers < 1:
        raise BenchError(f"--workers {args.workers}: give 1 or more")
    if not 0 < args.gpu_fraction <= 1 or args.cpus_per_run <= 0:
        raise BenchError("--gpu-fraction must be in (0, 1] and --cpus-per-run above 0: e.g. --gpu-fraction 0.25")
    return Options(Path(args.results), args.data, args.device, args.eval_protocol, args.checkpoint_every,
                   args.batch_seeds, args.fast)


def show_status(jobs: list[Job], args: argparse.Namespace) -> int:
    """`--status`: each job's run as `python -m bench status` shows it, "not started" for one
    with no folder yet; nothing runs."""
    from .status import planned_status, print_statuses

    results = Path(args.results)

    def plan(job: Job) -> str:
        if not job.rescores(results):
            return ""
        return f"to be scored again from {job.source.folder(results).relative_to(results).as_posix()}"
    print_statuses([planned_status(job.folder(results), results, job.config().meta_iters, plan(job))
                    for job in jobs], args.json)
    return 0


def execute_and_report(jobs: list[Job], args: argparse.Namespace) -> int:
    """Run the jobs as the command line asked (`--status`: say where they stand); exit code 1
    when any run did not finish."""
    if args.status:
        return show_status(jobs, args)
    from .checkpoint import parse_every

    parse_every(args.checkpoint_every)  # fail before anything starts
    summaries = run_sweep(jobs, options_from(args), workers=args.workers, use_ray=args.ray is not None,
                          ray_address=args.ray or None, cpus_per_run=args.cpus_per_run,
                          gpu_fraction=args.gpu_fraction)
    failed = [s for s in summaries if s["state"] != FINISHED]
    if failed:
        first = failed[0]
        raise BenchError(f"{len(failed)} of {len(summaries)} runs did not finish, e.g. {first['run']}: "
                         f"{first['message']}; see {Path(args.results) / 'logs'}, fix it and run the same "
                         "command again (finished runs are skipped, unfinished ones resume)")
    print(f"all {len(jobs)} runs finished")
    return 0


def main_sweep(args: argparse.Namespace) -> int:
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    if not algos:
        raise BenchError("--algos is empty: e.g. --algos reptile,fomaml")
    jobs = plan([args.preset], algos, parse_seeds(args.seeds), parse_overrides(args.overrides))
    return execute_and_report(jobs, args)
