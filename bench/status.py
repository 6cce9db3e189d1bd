"""`python -m bench status [RESULTS_DIR]`: where every run under a results folder stands.

A run at the paper's scale takes hours on a CPU, a table's sweep days, so a person wants
to know without opening files which runs are done, which are still going and how long
they have left, and which were stopped on the way. This reads each run folder's own
files, the state marker, `config.json`, `metrics.csv` and `final.json`, and changes
nothing (it takes the run's lock only to test it, and lets go at once).

States:

- `finished`: the final evaluation is written; its value with the interval over test tasks;
- `running`: a process holds the run's lock now (on this machine);
- `stopped`: marked running, but no process holds its lock: it was killed (a lost machine,
  SIGKILL, a closed terminal); the same command with `--resume` continues it from its last
  checkpoint, and the command is printed;
- `running?`: marked running by another host, where alone its lock can be checked;
- `failed`: the run's own message (a divergence, an error), with its last good checkpoint;
- `incomplete`: files of a run but no state marker and no final evaluation;
- `not started`: a run a sweep plans (`sweep --status`, `reproduce --status`) with no folder yet.

For unfinished runs: the latest logged meta-iteration, the recent cost per meta-iteration
(the median over the last logged intervals of the training clock, which leaves out the
periodic evaluations and, being a median, a pause or a restart) and the meta-training
time left at that cost (the evaluations still to come are not included).
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import socket
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BenchError
from .learner import read_json
from .results import FAILED, FINISHED, RUNNING, STATE, has_run, is_locked, read_state

RUN_MARKERS = ("config.json", "final.json", STATE)
RECENT = 10
"""Logged intervals the recent cost is the median of."""


@dataclass
class RunStatus:
    path: str
    state: str
    step: int | None
    meta_iters: int | None
    ms_per_iter: float | None
    result: str
    detail: str = ""
    """A line for a failed run (its message), a stopped one (the command that continues it)
    or one whose lock only another host can check."""

    @property
    def left_s(self) -> float | None:
        if self.state in (FINISHED, FAILED, NOT_STARTED) or None in (self.step, self.meta_iters, self.ms_per_iter):
            return None
        return max(self.meta_iters - self.step, 0) * self.ms_per_iter / 1000


def _train_rows(path: Path) -> tuple[list[tuple[int, float]], float | None]:
    """(meta-iteration, meta-training seconds) of each logged training row, in order, and
    the last logged training loss."""
    points: dict[int, float] = {}
    loss = None
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("split") != "train":
                    continue
                try:
                    points[int(row["step"])] = float(row["wall_s"])
                    if row.get("metric") == "loss":
                        loss = float(row["value"])
                except (KeyError, TypeError, ValueError):
                    continue  # a row cut short by a killed writer
    except OSError:
        pass
    return sorted(points.items()), loss


def recent_ms_per_iter(clock: list[tuple[int, float]], recent: int = RECENT) -> float | None:
    """The median milliseconds per meta-iteration over the last `recent` logged intervals."""
    rates = [(b_s - a_s) * 1000 / (b - a) for (a, a_s), (b, b_s) in zip(clock, clock[1:]) if b > a]
    return statistics.median(rates[-recent:]) if rates else None


def _result(final: dict[str, Any]) -> str:
    value, ci = final.get("value"), final.get("ci95")
    if not isinstance(value, (int, float)):
        return "no final value"
    tasks = f" ({final['tasks']:,} tasks)" if isinstance(final.get("tasks"), int) else ""
    if final.get("metric") == "accuracy":
        ci_text = f" ± {ci * 100:.2f}" if isinstance(ci, (int, float)) else ""
        return f"{value * 100:.2f}%{ci_text}{tasks}"
    ci_text = f" ± {ci:.4g}" if isinstance(ci, (int, float)) else ""
    return f"{final.get('metric', 'value')} {value:.4g}{ci_text}{tasks}"


def resume_command(folder: Path, config: dict[str, Any]) -> str | None:
    """The command that continues a run: its algorithm, preset, seed, `--set` values,
    device and evaluation protocol, its results folder (three levels above the run's),
    and `--resume`."""
    if not all(k in config for k in ("algo", "preset", "seed")) or config.get("evaluated_from"):
        return None
    argv = ["python", "-m", "bench", "run", "--algo", str(config["algo"]), "--preset", str(config["preset"]),
            "--seed", str(config["seed"])]
    for key, value in (config.get("overrides") or {}).items():
        argv += ["--set", f"{key}={value}"]
    if config.get("device"):
        argv += ["--device", str(config["device"])]
    protocol = (config.get("eval_protocol") or {}).get("name", "shared")
    if config.get("own_protocol"):
        argv += ["--eval-protocol", "both"]
    elif protocol != "shared":
        argv += ["--eval-protocol", "own"]
    argv += ["--results", str(folder.parent.parent.parent), "--resume"]
    return shlex.join(argv)


def run_status(folder: Path, root: Path) -> RunStatus:
    """Where the run in `folder` stands (see the module's docstring)."""
    rel = folder.relative_to(root).as_posix() if folder != root else folder.name
    config = read_json(folder / "config.json") or {}
    marker = read_state(folder) or {}
    state = marker.get("state") or "incomplete"
    meta_iters = config.get("meta_iters") if isinstance(config.get("meta_iters"), int) else None
    clock, loss = _train_rows(folder / "metrics.csv")
    step = clock[-1][0] if clock else marker.get("step")
    ms = recent_ms_per_iter(clock)
    if state == FINISHED:
        final = read_json(folder / "final.json") or {}
        return RunStatus(rel, state, meta_iters if meta_iters is not None else step, meta_iters,
                         final.get("ms_per_meta_iter"), _result(final))
    result = f"train loss {loss:.4g}" if loss is not None else ""
    if isinstance(step, int) and meta_iters is not None and step >= meta_iters:
        result = "meta-training done, final evaluation not written yet"
    checkpoint = marker.get("step")
    if state == FAILED:
        at = f" (last good checkpoint: meta-iteration {checkpoint:,})" if isinstance(checkpoint, int) else ""
        return RunStatus(rel, state, step, meta_iters, ms, result,
                         f"failed: {rel}: {marker.get('message') or 'no message'}{at}")
    if state == RUNNING:
        host = marker.get("host")
        if host and host != socket.gethostname():
            return RunStatus(rel, "running?", step, meta_iters, ms, result,
                             f"running?: {rel} is marked running by host {host}; only there can its lock "
                             "be checked")
        if not is_locked(folder):
            at = f" from its checkpoint at meta-iteration {checkpoint:,}" if isinstance(checkpoint, int) else ""
            command = resume_command(folder, config) or "its own command plus --resume"
            return RunStatus(rel, "stopped", step, meta_iters, ms, result,
                             f"stopped: {rel} continues{at} with `{command}`")
    return RunStatus(rel, state, step, meta_iters, ms, result)


NOT_STARTED = "not started"


def planned_status(folder: Path, root: Path, meta_iters: int, plan: str = "") -> RunStatus:
    """A planned run's status (a sweep's or a paper table's, `--status`): `run_status`, or
    "not started" when its folder holds no run yet, with `plan` as its result."""
    if has_run(folder):
        return run_status(folder, root)
    return RunStatus(folder.relative_to(root).as_posix(), NOT_STARTED, 0, meta_iters, None, plan)


def print_statuses(statuses: list[RunStatus], as_json: bool) -> None:
    """The table (`table`), or with `as_json` one JSON object per run."""
    if as_json:
        for s in statuses:
            print(json.dumps({**s.__dict__, "left_s": s.left_s}, sort_keys=True))
    else:
        print("\n".join(table(statuses)))


def run_folders(root: Path) -> list[Path]:
    """Every run folder under `root` (any depth; `root` itself when it is one), sorted."""
    return sorted({p.parent for name in RUN_MARKERS for p in root.rglob(name) if p.is_file()})


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def table(statuses: list[RunStatus]) -> list[str]:
    """The status table's lines (fixed-width columns), then each stopped or failed run's detail."""
    header = ["run", "state", "meta-iterations", "ms/iter", "training left", "result"]
    rows = []
    for s in statuses:
        done = f"{s.step:,}" if isinstance(s.step, int) else "?"
        total = f"{s.meta_iters:,}" if s.meta_iters is not None else "?"
        pct = f" ({100 * s.step / s.meta_iters:.0f}%)" if isinstance(s.step, int) and s.meta_iters else ""
        ms = f"{s.ms_per_iter:.1f}" if isinstance(s.ms_per_iter, (int, float)) else "-"
        rows.append([s.path, s.state, f"{done}/{total}{pct}", ms, _duration(s.left_s), s.result])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state] = counts.get(s.state, 0) + 1
    lines.append(f"{len(statuses)} run(s): " + ", ".join(f"{n} {state}" for state, n in counts.items()))
    lines += [s.detail for s in statuses if s.detail]
    return lines


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("status", help="which runs under a results folder are finished, running, stopped "
                                             "or failed, and how long the unfinished ones have left")
    p.add_argument("results", nargs="?", default="results",
                   help="results folder, or any folder below it, or one run (default: results)")
    p.add_argument("--json", action="store_true", help="one JSON object per run instead of the table")
    return p


def main_status(args: argparse.Namespace) -> int:
    root = Path(args.results)
    if not root.is_dir():
        raise BenchError(f"results folder {root} does not exist: pass the folder your runs wrote to "
                         "(`--results` of `python -m bench run`, default results)")
    statuses = [run_status(folder, root) for folder in run_folders(root)]
    if not statuses:
        print(f"no runs in {root}: start one with `python -m bench run --algo reptile --results {root}`")
        return 0
    print_statuses(statuses, args.json)
    return 0
