"""Command line: `python -m bench run|sweep|reproduce|status|check|presets|report|variance|speed|memory|demo ...`."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading

from . import __version__, check, demo, memory, reevaluate, report, reproduce, speed, status, sweep, variance
from .config import available_presets, load_config, parse_overrides, preset_values
from .errors import BenchError
from .fast import with_fast

PRESET_COLUMNS = ("task", "ways", "shots", "train_shots", "inner_optimizer", "inner_lr", "inner_steps",
                  "inner_batch", "meta_batch", "meta_iters", "eval_steps", "eval_batch")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--version", action="version", version=f"bench {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="meta-train one algorithm with one seed and evaluate it")
    r.add_argument("--algo", required=True, help="algorithm name, e.g. reptile")
    r.add_argument("--preset", default="omniglot-5w1s", help="preset name (see `presets`)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--seeds", default=None, metavar="LIST",
                   help="several runs, one per seed, e.g. 0-4 or 0,2,5 (instead of --seed): one after another, "
                        "or trained together with --batch-seeds")
    r.add_argument("--batch-seeds", action="store_true",
                   help="with --seeds: train the runs in one computation, stacked on a leading dimension (each "
                        "still writes its own run folder; equal to training them one by one within float "
                        "tolerance)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set meta_iters=1000 (repeatable)")
    r.add_argument("--results", default="results", help="results folder (default: results)")
    r.add_argument("--data", default=None, help="data root (default: $BENCH_DATA, else a per-user cache)")
    r.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    r.add_argument("--eval-protocol", default="shared", choices=("shared", "own", "both"),
                   help="shared: the preset's evaluation, the same for every algorithm (default); own: the "
                        "algorithm's own published protocol (MAML paper for maml/fomaml, Reptile paper for "
                        "the others); both: shared, with the own one reported beside it in final.json")
    r.add_argument("--force", action="store_true", help="start an existing run over (its files are replaced)")
    r.add_argument("--resume", action="store_true",
                   help="continue the run from its last checkpoint (one that finished is left as it is; "
                        "with no run yet, start one): the same settings are required")
    r.add_argument("--checkpoint-every", default="60s", metavar="N|Ns|Nm",
                   help="checkpoint every N meta-iterations, or every N seconds/minutes of meta-training "
                        "(default 60s); where checkpoints fall never changes a result")
    r.add_argument("--fast", action="store_true",
                   help="add the execution settings measured fastest for the device and the preset's path "
                        "(compile, cuda_graph, channels_last, ...; they change cost, not results); --set wins")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")

    sub.add_parser("presets", help="list the presets and their key settings")
    check.add_parser(sub)
    demo.add_parser(sub)
    reevaluate.add_parser(sub)
    memory.add_parser(sub)
    report.add_parser(sub)
    reproduce.add_parser(sub)
    speed.add_parser(sub)
    status.add_parser(sub)
    sweep.add_parser(sub)
    variance.add_parser(sub)
    return p


def _presets() -> None:
    rows = [[name] + [str(preset_values(name)[c]) for c in PRESET_COLUMNS] for name in available_presets()]
    header = ["preset", *PRESET_COLUMNS]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


@contextlib.contextmanager
def _sigterm_unwinds():
    """SIGTERM (a scheduler's preemption) unwinds like Ctrl-C, so the run is marked
    failed and its lock released; the previous handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "presets":
            _presets()
            return 0
        commands = {"memory": memory.main_memory, "report": report.main_report, "check": check.main_check,
                    "demo": demo.main_demo, "evaluate": reevaluate.main_evaluate,
                    "sweep": sweep.main_sweep, "reproduce": reproduce.main_reproduce,
                    "speed": speed.main_speed, "status": status.main_status, "variance": variance.main_variance}
        if args.command in commands:
            return commands[args.command](args)
        from .runner import run_seeds  # imports torch: keep `presets` instant

        if args.batch_seeds and args.seeds is None:
            raise BenchError("--batch-seeds trains several seeds together: name them with --seeds, e.g. --seeds 0-4")
        seeds = sweep.parse_seeds(args.seeds) if args.seeds is not None else [args.seed]
        overrides = parse_overrides(args.overrides)
        cfg = load_config(args.preset, overrides, algo=args.algo)
        if args.fast:
            from .runner import resolve_device

            overrides, added = with_fast(overrides, cfg, args.algo, resolve_device(args.device).type,
                                         args.batch_seeds)
            print(added, file=sys.stderr)
            cfg = load_config(args.preset, overrides, algo=args.algo)
        with _sigterm_unwinds():
            finals = run_seeds(cfg, algo=args.algo, preset=args.preset, seeds=seeds, batch_seeds=args.batch_seeds,
                               results=args.results, data=args.data, device=args.device, force=args.force,
                               resume=args.resume, progress=not args.no_progress, overrides=overrides,
                               eval_protocol=args.eval_protocol, checkpoint_every=args.checkpoint_every)
        print(json.dumps(finals if args.seeds is not None else finals[0], indent=2, sort_keys=True))
        return 0
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
