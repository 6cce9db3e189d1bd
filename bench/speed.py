"""`python -m bench speed`: time per meta-iteration of each algorithm, side by side.

Every (algorithm, path) combination runs the runner's meta-iteration (draw a
meta-batch, compute the meta-gradient, apply the outer step) with the preset's
settings (and its per-algorithm settings), on random data of the task's shape
resident on the device, so no data set is needed and the data cannot change the
time. The combinations are timed round-robin, one meta-iteration each per round,
so that a noisy, shared machine slows them alike; the table gives the median over
rounds and the ratio to the first algorithm on the same path.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

PATHS = ("serial", "batched")


def _setup(preset: str, algo: str, batched: bool, device):
    """One combination's meta-iteration as a closure."""
    import torch

    from algorithms import ALGORITHMS, inner_optimizer

    from .config import load_config
    from .data.miniimagenet import SCALE
    from .episodes import ClassSampler, SineSampler
    from .models import build_model, task_loss
    from .runner import check_algorithm_settings, meta_iteration

    cfg = load_config(preset, algo=algo).replace(batched=batched)
    check_algorithm_settings(cfg, algo)
    rng = np.random.default_rng(0)
    if cfg.task == "sine":
        sampler = SineSampler(device, rng)
    elif cfg.task == "miniimagenet":  # random pixels of the real shape, scaled as the real data
        pool = torch.randint(0, 256, (max(cfg.ways, 64), 40, 3, 84, 84), dtype=torch.uint8, device=device)
        sampler = ClassSampler(pool, cfg.ways, rng, scale=SCALE)
    else:
        pool = torch.randint(0, 2, (max(cfg.ways, 64), 20, 28, 28), dtype=torch.uint8, device=device)
        sampler = ClassSampler(pool, cfg.ways, rng)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    loss = task_loss(model, cfg)
    opt = (torch.optim.SGD if cfg.meta_optimizer == "sgd" else torch.optim.Adam)(list(params.values()), lr=1e-9)
    box = {"state": inner_optimizer(cfg).init(params)}
    algorithm = ALGORITHMS[algo]

    def timed():
        step = meta_iteration(algorithm, algo, loss, params, box["state"], sampler, opt, cfg)
        box["state"] = step.inner_state
        float(step.logs["loss"])  # the host sync the runner does when it logs; waits for a GPU

    return timed


def measure(preset: str, algos: list[str], paths: list[str], rounds: int, device) -> list[dict]:
    """Median milliseconds per meta-iteration of every (algo, path), timed round-robin."""
    combos = {(a, p): _setup(preset, a, p == "batched", device) for a in algos for p in paths}
    for fn in combos.values():  # warm-up: first-call costs (allocations, kernel selection)
        fn()
        fn()
    times: dict[tuple[str, str], list[float]] = {k: [] for k in combos}
    for _ in range(rounds):
        for key, fn in combos.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    rows = []
    for (algo, path), ts in times.items():
        ms = 1000 * statistics.median(ts)
        base = 1000 * statistics.median(times[(algos[0], path)])
        rows.append({"algo": algo, "path": path, "ms": round(ms, 1), "ratio": round(ms / base, 2)})
    return rows


def table(rows: list[dict], algos: list[str], paths: list[str]) -> str:
    by = {(r["algo"], r["path"]): r for r in rows}
    head = "| algorithm | " + " | ".join(f"{p} ms (x {algos[0]})" for p in paths) + " |"
    lines = [head, "|---|" + "---|" * len(paths)]
    for a in algos:
        cells = [f"{by[(a, p)]['ms']} ({by[(a, p)]['ratio']})" for p in paths]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_parser(sub) -> None:
    s = sub.add_parser("speed", help="time per meta-iteration of each algorithm, side by side")
    s.add_argument("--preset", default="omniglot-5w1s")
    s.add_argument("--algos", default="reptile,fomaml,maml,joint", help="comma-separated algorithms")
    s.add_argument("--paths", default="serial,batched", help="serial, batched or both (comma-separated)")
    s.add_argument("--rounds", type=int, default=10, help="timed meta-iterations per combination")
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")


def main_speed(args) -> int:
    import torch

    from algorithms import ALGORITHMS

    from .config import _unknown, load_config
    from .errors import ConfigError
    from .runner import resolve_device

    load_config(args.preset)
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    for a in algos:
        if a not in ALGORITHMS:
            raise _unknown("algorithm", a, sorted(ALGORITHMS))
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not paths or any(p not in PATHS for p in paths):
        raise ConfigError(f"--paths {args.paths!r}: choose from {', '.join(PATHS)}")
    if args.rounds < 1:
        raise ConfigError("--rounds must be 1 or more")
    device = resolve_device(args.device)
    rows = measure(args.preset, algos, paths, args.rounds, device)
    print(f"preset {args.preset}, {device.type}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} round-robin meta-iterations")
    print(table(rows, algos, paths))
    return 0
