"""`python -m bench evaluate RUN_DIR --set transductive=true`: score a finished run again.

Meta-training never reads the evaluation settings, so one trained initialisation can
be scored under others without training it again: with or without transduction (the
Reptile paper's "Reptile" and "Reptile + transduction" rows differ only there), with
more fine-tuning steps, on more test tasks, or under the algorithm's own published
protocol (`--eval-protocol`). The run's last checkpoint (its weights and the inner
optimizer state carried out of meta-training) is fine-tuned on the same test tasks its
own final evaluation drew.

The result is a run folder of its own, where `bench run` with those settings would
have written it (`<results>/<preset>/<method>/seed<k>`, e.g. `reptile-transductive`
for the Reptile preset scored transductively), so the report, the sweeps and
`bench reproduce` treat it as that run. It holds what such a run would: config.json
(the new evaluation settings, and `evaluated_from` naming the source), the source's
env.json, final.json (the new evaluation; the training's seconds are the source's),
and metrics.csv with the source's meta-training rows and the new final test row. The
source's periodic evaluations are left out, being scored with the old settings.
Everything is computed before the first file is written.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from .config import Config, parse_overrides, parse_value, saved_config, validate
from .errors import BenchError, ConfigError
from .protocols import CHOICES, scored
from .results import (CHECKPOINT, FINISHED, RunLock, check_writable, clear_run, clear_temporaries, has_run,
                      read_state, run_dir, run_method, write_csv, write_json, write_state)

EVAL_SETTINGS = ("transductive", "eval_steps", "eval_batch", "eval_tasks", "eval_queries", "eval_chunk",
                 "eval_matmul")
"""The settings `evaluate` may change: the final evaluation's, which meta-training never
reads (the fine-tuning optimizer is the protocol's: `--eval-protocol own`)."""

HOW = "give the folder of a finished run, e.g. results/omniglot-5w1s/reptile/seed0"


def evaluation_settings(cfg: Config, overrides: dict[str, str]) -> tuple[Config, dict[str, Any]]:
    """cfg with the `--set` overrides applied, and the typed overrides; any setting that
    meta-training reads is refused."""
    training = sorted(set(overrides) - set(EVAL_SETTINGS))
    if training:
        raise ConfigError(f"--set {training[0]} changes meta-training, which `evaluate` does not redo: set only "
                          f"{', '.join(EVAL_SETTINGS)} (or train a new run with `bench run`)")
    typed = {k: parse_value(k, v) for k, v in overrides.items()}
    return validate(cfg.replace(**typed)), typed


def source_run(run: Path) -> tuple[Config, dict[str, Any], dict[str, Any]]:
    """The finished run's settings, raw config.json and final.json; raises unless it finished
    with its last checkpoint in place."""
    cfg, saved = saved_config(run, HOW)
    state = read_state(run) or {}
    if state.get("state") != FINISHED or not (run / "final.json").is_file():
        raise BenchError(f"{run} has not finished (state {state.get('state', 'unknown')}): finish it with "
                         "`python -m bench run ... --resume`, then evaluate it")
    if not (run / CHECKPOINT).is_file():
        raise BenchError(f"{run} has no {CHECKPOINT} (its trained weights): `evaluate` needs the folder the run "
                         "wrote, with its checkpoint")
    return cfg, saved, json.loads((run / "final.json").read_text())


def target_folder(run: Path, cfg: Config, saved: dict[str, Any], out: str | None) -> Path:
    """Where the new evaluation goes: `out`, else where `bench run` would put a run with
    those settings (beside the source, under the same results folder)."""
    if out is not None:
        path = Path(out)
    else:
        results = run.resolve().parents[2]  # <results>/<preset>/<method>/seed<k>
        path = run_dir(results, saved["preset"], run_method(saved["algo"], cfg, saved["preset"]), saved["seed"])
    if path.resolve() == run.resolve():
        raise BenchError(f"these settings keep the run's own folder name ({run}), which `evaluate` never "
                         "overwrites: name a new folder with --out DIR")
    return path


def reevaluate(run: str | Path, overrides: dict[str, str] | None = None, *, eval_protocol: str = "shared",
               out: str | Path | None = None, data: str | Path | None = None, device: str | None = None,
               force: bool = False, progress: bool = True) -> Path:
    """Score the finished run in `run` again with `overrides` (evaluation settings) and
    `eval_protocol`; write the result as a run folder (see the module docstring) and
    return its path."""
    import torch

    from .checkpoint import load_checkpoint
    from .evaluate import sine_predictions
    from .models import build_model, laid_out
    from .runner import final_evaluation, preflight, resolve_device
    from .tasks import TaskData

    run = Path(run)
    src_cfg, saved, src_final = source_run(run)
    cfg, typed = evaluation_settings(src_cfg, overrides or {})
    algo, preset, seed = saved["algo"], saved["preset"], int(saved["seed"])
    evals = preflight(cfg, algo, eval_protocol)  # the checks of `bench run`, and the protocols
    path = target_folder(run, cfg, saved, None if out is None else str(out))
    dev = resolve_device(device)
    lock = RunLock(path)
    if has_run(path):
        lock.acquire()  # refuses while another process writes there
        if not force:
            lock.release()
            raise BenchError(f"a run already exists in {path}: pass --force to replace it with this evaluation, "
                             "or name another folder with --out DIR")
    try:
        check_writable(path)
        ckpt = load_checkpoint(run / CHECKPOINT, dev)
        if ckpt.get("step") != cfg.meta_iters:
            raise BenchError(f"{run}/{CHECKPOINT} holds meta-iteration {ckpt.get('step')}, not the run's last "
                             f"({cfg.meta_iters}): the folder was changed after the run finished; run it again")
        task_data = TaskData(cfg, dev, data, progress=progress)
        torch.manual_seed(seed)
        model = build_model(cfg).to(dev)
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(ckpt["params"][k])
        inner_state = laid_out({k: v.to(dev) for k, v in ckpt["inner_state"].items()}, cfg)

        results, eval_s = final_evaluation(model, params, inner_state, task_data, seed, evals, cfg.eval_tasks)
        sine = (sine_predictions(model, params, inner_state, task_data.sampler("test", "final", seed), evals[0][1])
                if cfg.task == "sine" else None)

        source = {"run": os.path.relpath(run.resolve(), path.resolve()), "settings": typed,
                  "eval_protocol": eval_protocol, "checkpoint_step": ckpt["step"]}
        config = {**saved, **typed, "eval_protocol": evals[0][0].describe(),
                  "own_protocol": evals[1][0].describe() if len(evals) > 1 else None,
                  "overrides": {**saved.get("overrides", {}), **(overrides or {})}, "evaluated_from": source}
        final = {**scored(results, evals), "algo": algo, "preset": preset, "seed": seed, "meta_iters": cfg.meta_iters,
                 **{k: src_final[k] for k in ("train_seconds", "periodic_eval_seconds", "periodic_eval_last_seconds",
                                              "ms_per_meta_iter", "seeds_together") if k in src_final},
                 "eval_seconds": round(eval_s, 3), "eval_device": dev.type, "evaluated_from": source["run"]}
        metrics = _metrics(run, cfg.meta_iters, src_final.get("train_seconds", 0.0), results[0])
    except BaseException:
        lock.release()
        raise

    # Every check and the whole computation are done: now the writes, each atomic.
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock.acquire()
        clear_temporaries(path)
        clear_run(path)
        write_json(path / "config.json", config)
        if (run / "env.json").is_file():
            (path / "env.json").write_bytes((run / "env.json").read_bytes())
        write_csv(path / "metrics.csv", metrics)
        if sine is not None:
            write_csv(path / "sine_predictions.csv", sine)
        write_json(path / "final.json", final)
        write_state(path, FINISHED, step=cfg.meta_iters, resumed_at=[], evaluated_from=source["run"])
    finally:
        lock.release()
    return path


def _metrics(run: Path, meta_iters: int, train_s: float, result) -> list[dict[str, Any]]:
    """The source's meta-training rows (split "train"), then the new final test row."""
    import csv

    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("split") == "train"]
    return rows + [{"step": meta_iters, "wall_s": f"{train_s:.3f}", "split": "test", "metric": result.metric,
                    "value": repr(float(result.value))}]


def add_parser(sub) -> None:
    e = sub.add_parser("evaluate", help="score a finished run again with other evaluation settings (e.g. "
                                        "transductively), without training it again; writes a run folder")
    e.add_argument("run", metavar="RUN_DIR", help="a finished run's folder, e.g. results/omniglot-5w1s/reptile/seed0")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"an evaluation setting ({', '.join(EVAL_SETTINGS)}), e.g. --set transductive=true")
    e.add_argument("--eval-protocol", default="shared", choices=CHOICES,
                   help="as for `run`: the settings as given (shared), the algorithm's own published protocol, "
                        "or both")
    e.add_argument("--out", default=None, metavar="DIR",
                   help="the new run folder (default: where `bench run` with these settings would write)")
    e.add_argument("--force", action="store_true", help="replace a run already in the new folder")
    e.add_argument("--data", default=None, help="data root (default: $BENCH_DATA, else a per-user cache)")
    e.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    e.add_argument("--no-progress", action="store_true")


def main_evaluate(args: argparse.Namespace) -> int:
    path = reevaluate(args.run, parse_overrides(args.overrides), eval_protocol=args.eval_protocol, out=args.out,
                      data=args.data, device=args.device, force=args.force, progress=not args.no_progress)
    print(json.dumps(json.loads((path / "final.json").read_text()), indent=2, sort_keys=True))
    print(path)
    return 0
