"""`python -m bench variance RUN_DIR ...`: how noisy each algorithm's update is.

The Reptile paper argues that Reptile learns faster because its update has lower
variance (section 6.2). At every snapshot a run saved (the `snapshots` setting),
this computes each algorithm's meta-gradient, the update direction, separately on
`--tasks` independently sampled meta-training tasks from that same initialisation
and inner optimizer state, and writes to the run's `variance.csv`, per snapshot and
algorithm:

- `mean_norm`: the norm of the mean update over tasks, ||u_bar||;
- `variance`: the per-task variance, the trace of the covariance of the updates,
  sum_i ||u_i - u_bar||^2 / (n - 1);
- `snr`: signal to noise, sqrt(max(||u_bar||^2 - variance / n, 0)) / sqrt(variance):
  the norm of the expected update (||u_bar||^2 overestimates it by variance / n, which
  is subtracted) over the standard deviation of one task's update. It does not
  depend on the update's scale, so algorithms whose updates differ in size (Reptile's
  k steps, FOMAML's one) compare directly.

Every algorithm sees the same tasks: the samplers draw the classes and examples
from the same seed, and FOMAML's shared tail is the last of the same minibatches.
"""

from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING

from .errors import BenchError

if TYPE_CHECKING:  # torch is imported where used: the CLI's other commands start without it
    from torch import Tensor

def update_stats(updates: dict[str, Tensor]) -> dict[str, float]:
    """mean_norm, variance and snr of per-task updates (each tensor: tasks first)."""
    import torch

    flat = torch.cat([u.reshape(u.shape[0], -1) for u in updates.values()], 1).double()
    n = flat.shape[0]
    if n < 2:
        raise ValueError("the variance needs at least 2 tasks")
    mean = flat.mean(0)
    variance = float(((flat - mean) ** 2).sum() / (n - 1))
    mean_sq = float(mean @ mean)
    signal = max(mean_sq - variance / n, 0.0) ** 0.5
    return {"mean_norm": mean_sq ** 0.5, "variance": variance,
            "snr": signal / variance ** 0.5 if variance > 0 else float("inf")}


def per_task_updates(algorithm, loss, params, inner_state, episodes, cfg) -> dict[str, Tensor]:
    """The algorithm's meta-gradient on each task of `episodes` alone, all from the
    same params and inner state (stacked, tasks first)."""
    import torch

    grads = [algorithm(loss, params, inner_state, episodes.tasks(i, i + 1), cfg).grad
             for i in range(episodes.num_tasks)]
    return {k: torch.stack([g[k] for g in grads]) for k in params}


RUN_HINT = "give a run folder written by `python -m bench run` with snapshots (the presets keep 10; --set snapshots=N)"


def _bad_run(run: Path, why: str) -> BenchError:
    return BenchError(f"{run}: {why}: {RUN_HINT}")


def measure_run(run: Path, algos: list[str], tasks: int, *, data=None, device=None, seed: int = 0,
                progress: bool = True) -> Path:
    """Write `run`/variance.csv (atomically) and return its path."""
    import torch
    from tqdm import tqdm

    from algorithms import ALGORITHMS

    from .config import _unknown, algo_settings, available_presets, saved_config
    from .models import build_model, task_loss
    from .plugins import load_algorithms
    from .results import write_csv
    from .runner import check_algorithm_settings, resolve_device, train_episodes
    from .tasks import TaskData

    cfg, saved = saved_config(run, RUN_HINT)
    load_algorithms()
    for a in algos:
        if a not in ALGORITHMS:
            raise _unknown("algorithm", a, sorted(ALGORITHMS))
    snaps = sorted((run / "snapshots").glob("step*.pt"), key=lambda p: int(p.stem[4:]))
    if not snaps:
        raise _bad_run(run, "no snapshots/ folder")
    preset = saved.get("preset")
    configs = {}
    for a in algos:
        extra = algo_settings(preset, a) if preset in available_presets() else {}
        configs[a] = cfg.replace(**extra, meta_batch=tasks)
        check_algorithm_settings(configs[a], a)
    dev = resolve_device(device)
    task_data = TaskData(cfg, dev, data)
    model = build_model(cfg).to(dev)
    loss = task_loss(model, cfg)
    rows = []
    bar = tqdm(total=len(snaps) * len(algos), disable=not progress, desc=f"variance {run}", unit="update")
    for snap in snaps:
        state = torch.load(snap, map_location=dev, weights_only=True)
        for a in algos:
            # The same sampler seed for every algorithm and snapshot: the same tasks.
            sampler = task_data.sampler("train", "periodic", seed)
            episodes = train_episodes(sampler, configs[a], a)
            with torch.no_grad():
                updates = per_task_updates(ALGORITHMS[a], loss, state["params"], state["inner_state"],
                                           episodes, configs[a])
            rows.append({"step": state["step"], "algo": a, "tasks": tasks, **update_stats(updates)})
            bar.update(1)
    bar.close()
    out = run / "variance.csv"
    write_csv(out, [{k: (repr(float(v)) if isinstance(v, float) else v) for k, v in r.items()} for r in rows])
    return out


def add_parser(sub) -> None:
    v = sub.add_parser("variance", help="per-task variance of each algorithm's update at a run's snapshots")
    v.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, e.g. results/omniglot-5w1s/reptile/seed0")
    v.add_argument("--algos", default="reptile,fomaml,maml,joint", help="comma-separated algorithms")
    v.add_argument("--tasks", type=int, default=100, help="independently sampled tasks per measurement")
    v.add_argument("--data", default=None, help="data root (default: $BENCH_DATA, else a per-user cache)")
    v.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    v.add_argument("--no-progress", action="store_true")


def main_variance(args) -> int:
    from .errors import ConfigError

    if args.tasks < 2:
        raise ConfigError("--tasks must be 2 or more (a variance needs two tasks)")
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    for run in args.runs:
        out = measure_run(Path(run), algos, args.tasks, data=args.data, device=args.device,
                          progress=not args.no_progress)
        print(out)
    return 0
