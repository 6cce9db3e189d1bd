"""`python -m bench memory`: peak memory and time of second-order MAML's meta-gradient
as the number of inner steps grows, for both ways of computing it side by side.

`recompute` is the suite's MAML (`algorithms.maml.meta_gradient`: one inner step's
graph alive at a time); `unrolled` differentiates the whole unrolled inner loop at
once (`meta_gradient_unrolled`). Both run batched over the preset's meta-batch (vmap)
on the preset's network, inner optimizer and inner batch, with random inputs of the
task's shape (the data does not change the memory).

Each measurement runs in a fresh process, so one cannot inherit another's allocator
high-water mark. Peak memory is, on a GPU, `torch.cuda.max_memory_allocated` above
what was allocated before the meta-step; on the CPU, the growth of the process's
peak resident set (`ru_maxrss`) during the meta-step: that includes allocator
slack, so compare rows of one table rather than read the numbers as exact bytes.
Time is the median of `--repeats` meta-steps after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

IMPLEMENTATIONS = ("recompute", "unrolled")


def _rss_bytes() -> int:
    """Current resident set size (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


def measure(preset: str, impl: str, steps: int, device: str, repeats: int) -> dict:
    """Peak memory and median time of one batched MAML meta-gradient with `steps`
    adaptation steps (plus the query), in this process."""
    import torch
    from torch.func import vmap

    from algorithms import inner_optimizer
    from algorithms.maml import meta_gradient, meta_gradient_unrolled

    from .config import load_config
    from .models import build_model, task_loss

    cfg = load_config(preset).replace(inner_steps=steps + 1)
    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_model(cfg).to(dev)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    loss, opt = task_loss(model, cfg), inner_optimizer(cfg)
    state = opt.init(params)
    shape = (1, 1) if cfg.task == "sine" else ((1, 28, 28) if cfg.task == "omniglot" else (3, 84, 84))
    n, b, q = cfg.meta_batch, cfg.inner_batch, cfg.ways * max(cfg.query_shots, 1)
    xs = torch.rand(n, steps, b, *shape, device=dev)
    ys = torch.randint(0, cfg.ways, (n, steps, b), device=dev)
    qx, qy = torch.rand(n, q, *shape, device=dev), torch.randint(0, cfg.ways, (n, q), device=dev)
    if cfg.task == "sine":
        xs, qx = xs.view(n, steps, b, 1), qx.view(n, q, 1)
        ys, qy = torch.rand(n, steps, b, 1, device=dev), torch.rand(n, q, 1, device=dev)
    fn = meta_gradient if impl == "recompute" else meta_gradient_unrolled

    def meta_step():
        with torch.no_grad():
            out = vmap(lambda *t: fn(loss, opt, params, state, *t)[0])(xs, ys, qx, qy)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out

    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        meta_step()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _rss_bytes()
        meta_step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        meta_step()
        times.append(time.perf_counter() - t0)
    return {"impl": impl, "steps": steps, "peak_mib": round(max(peak, 0) / 2**20, 1),
            "ms": round(1000 * statistics.median(times), 1), "device": dev.type,
            "meta_batch": n, "inner_batch": b, "inner_optimizer": cfg.inner_optimizer}


def table(rows: list[dict]) -> str:
    """The measurements as a Markdown table, the two implementations side by side."""
    by = {(r["impl"], r["steps"]): r for r in rows}
    steps = sorted({r["steps"] for r in rows})
    lines = ["| adaptation steps | recompute peak MiB | unrolled peak MiB | recompute ms | unrolled ms |",
             "|---|---|---|---|---|"]
    for s in steps:
        rec, unr = by.get(("recompute", s), {}), by.get(("unrolled", s), {})
        lines.append(f"| {s} | {rec.get('peak_mib', '-')} | {unr.get('peak_mib', '-')} | "
                     f"{rec.get('ms', '-')} | {unr.get('ms', '-')} |")
    return "\n".join(lines)


def add_parser(sub) -> None:
    m = sub.add_parser("memory", help="peak memory and time of MAML's meta-gradient against inner steps")
    m.add_argument("--preset", default="omniglot-5w1s")
    m.add_argument("--steps", default="1,5,10", help="adaptation steps, comma-separated (default 1,5,10)")
    m.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    m.add_argument("--repeats", type=int, default=3, help="timed meta-steps per measurement")
    m.add_argument("--impl", default=",".join(IMPLEMENTATIONS), help="recompute,unrolled")


def main_memory(args) -> int:
    from .config import load_config
    from .errors import ConfigError
    from .runner import resolve_device

    load_config(args.preset)  # a bad preset fails here, once
    device = resolve_device(args.device).type
    try:
        steps = [int(s) for s in args.steps.split(",")]
    except ValueError:
        raise ConfigError(f"--steps {args.steps!r}: give comma-separated integers, e.g. --steps 1,5,10") from None
    if any(s < 1 for s in steps):
        raise ConfigError(f"--steps {args.steps!r}: every step count must be 1 or more")
    impls = args.impl.split(",")
    if any(i not in IMPLEMENTATIONS for i in impls):
        raise ConfigError(f"--impl {args.impl!r}: choose from {', '.join(IMPLEMENTATIONS)}")
    rows = []
    for s in steps:
        for impl in impls:
            out = subprocess.run(
                [sys.executable, "-m", "bench.memory", args.preset, impl, str(s), device, str(args.repeats)],
                capture_output=True, text=True)
            if out.returncode != 0:
                last = (out.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"{impl} at {s} steps failed: {last}", file=sys.stderr)
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    if rows:
        r = rows[0]
        print(f"MAML meta-gradient, preset {args.preset}, {r['device']}, meta-batch {r['meta_batch']}, "
              f"inner batch {r['inner_batch']}, inner {r['inner_optimizer']}")
        print(table(rows))
    return 0 if len(rows) == len(steps) * len(impls) else 1


if __name__ == "__main__":  # the worker: one measurement, printed as one JSON line
    preset, impl, steps, device, repeats = sys.argv[1:6]
    print(json.dumps(measure(preset, impl, int(steps), device, int(repeats))))
