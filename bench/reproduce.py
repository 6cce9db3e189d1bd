"""`python -m bench reproduce --table omniglot|miniimagenet`: a paper table as one sweep.

Every row of the Reptile paper's Table 2 (Omniglot: 5w1s, 5w5s, 20w1s, 20w5s) or
Table 1 (Mini-ImageNet: 5w1s, 5w5s), each column with each of the rows "MAML +
transduction", "FOMAML + transduction" (the MAML paper's settings, its `-maml`
presets), "Reptile" and "Reptile + transduction" (the Reptile paper's settings),
for every seed: the runs are queued as one sweep (`bench.sweep`), so the command
can be stopped and started again, and the report fills the table from them
(`bench/published.py` holds the table's rows and numbers).
"""

from __future__ import annotations

import argparse

from .config import parse_names, parse_overrides
from .errors import BenchError
from .published import PAPER_TABLES, table_runs
from .sweep import Job, add_options, execute_and_report, options_from, parse_seeds, units


def table_jobs(table: str, seeds: list[int], overrides: dict[str, str], algos: list[str] | None = None,
               columns: list[str] | None = None) -> list[Job]:
    """The sweep of a paper table: each row's preset and algorithm, transduction pinned
    as the row says, the seeds, then the common overrides (which may not override
    transduction: it is what tells the rows apart). A row that differs from an earlier
    one only in transduction (Reptile's "+ transduction") gets that row's run as its
    `source`: meta-training never reads transduction, so its run is the other's scored
    again (`bench evaluate --set transductive=...`), not a second meta-training."""
    if table not in PAPER_TABLES:
        raise BenchError(f"unknown table {table!r}: choose one of {', '.join(PAPER_TABLES)}")
    t = PAPER_TABLES[table]
    unknown = sorted(set(columns or ()) - set(t.settings))
    if unknown:
        raise BenchError(f"--columns {unknown[0]}: the {table} table's columns are {', '.join(t.settings)}")
    if "transductive" in overrides:
        raise BenchError("--set transductive is decided by each table row (with and without transduction): "
                         "leave it out")
    jobs: list[Job] = []
    trained: dict[tuple, Job] = {}  # (preset, algo, seed) -> the job that meta-trains it
    wanted = {f"{t.dataset}-{c}{suffix}" for c in columns or t.settings for suffix in ("", "-maml")}
    for _, preset, algo, transductive in table_runs(table):
        if algos and algo not in algos or preset not in wanted:
            continue
        items = (("transductive", str(transductive).lower()), *overrides.items())
        for seed in seeds:
            job = Job(preset, algo, seed, items, source=trained.get((preset, algo, seed)))
            trained.setdefault((preset, algo, seed), job)
            jobs.append(job)
    return jobs


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("reproduce", help="run every row of a paper table (Reptile paper Table 1 or 2) "
                                                "as one sweep; the report fills the table")
    p.add_argument("--table", required=True, choices=sorted(PAPER_TABLES),
                   help="omniglot (Reptile paper Table 2) or miniimagenet (Table 1)")
    p.add_argument("--algos", default=None, help="only these rows' algorithms, e.g. reptile (default: all)")
    p.add_argument("--columns", default=None,
                   help="only these columns, e.g. 5w1s,20w5s (default: all; omniglot: 5w1s, 5w5s, 20w1s, 20w5s)")
    p.add_argument("--dry-run", action="store_true", help="print the runs' commands and stop")
    add_options(p)
    return p


def main_reproduce(args: argparse.Namespace) -> int:
    algos = [a.strip() for a in args.algos.split(",")] if args.algos else None
    columns = (parse_names("--columns", args.columns, list(PAPER_TABLES[args.table].settings), "column")
               if args.columns is not None else None)
    jobs = table_jobs(args.table, parse_seeds(args.seeds), parse_overrides(args.overrides), algos, columns)
    if not jobs:
        raise BenchError(f"--algos {args.algos} selects no row of the {args.table} table: "
                         "choose among maml, fomaml, reptile")
    if args.dry_run and not args.status:
        options = options_from(args)
        for unit in units(jobs, options):
            for argv in unit.commands(options):
                print(" ".join(argv[1:]).replace("-m bench", "python -m bench", 1))
        return 0
    return execute_and_report(jobs, args)
