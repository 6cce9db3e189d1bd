"""`python -m bench speed --profile`: where a meta-iteration's time goes, row by row.

The rows of `python -m bench speed` (the same implementations, built the same way), each
warmed up as the speed table warms its rows up (compiled, its CUDA graph recorded), then
run PROFILE_ITERS times under `torch.profiler`: on a GPU, the kernels the meta-iteration
runs (those replayed from a CUDA graph too) and their time on the device; on the CPU,
the operators' own CPU time (an operator's time without its children's, so nested
operators add up to the whole). Each row is summed per meta-iteration (rank 0, "all")
and its TOP costliest kernels or operators listed, printed and written to
`results/speed/profile/<device>.csv` (PROFILE_COLUMNS). The profiler slows the host
side, so these times compare rows and kernels with each other; the speed table's are
the meta-iterations' own. The `seeds` row is per call, which trains its 5 runs.

The speed table says how fast each implementation is; this says why: on the GPU, the
graphed meta-iterations run at their kernels' time, and how many kernels they launch and
which ones cost most decides what a faster step has to change.
"""

from __future__ import annotations

from pathlib import Path

PROFILE_ITERS = 5
"""Meta-iterations profiled per row, after the row's warm-up."""
TOP = 8
"""The costliest kernels (or operators) listed per row."""
PROFILE_COLUMNS = ("algo", "preset", "implementation", "device", "rank", "name", "calls_per_meta_iter",
                   "ms_per_meta_iter", "share")


def profiled(fn, device, iters: int = PROFILE_ITERS) -> list[tuple[str, int, float]]:
    """(name, calls, seconds) of every kernel (CUDA) or operator (CPU, its own time) that
    `iters` calls of fn ran, the costliest first. fn must wait for the device (the speed
    table's rows do: `bench.speed._synced`), so that its kernels fall in the window."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(iters):
            fn()
    kind = DeviceType.CUDA if cuda else DeviceType.CPU
    found = [(e.key, e.count, (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e6)
             for e in prof.key_averages() if e.device_type == kind]
    return sorted((f for f in found if f[2] > 0), key=lambda f: -f[2])


def measure_profile(algos: list[str], device, *, only: list[str] | None = None, threads: int | None = None,
                    compiled: bool | None = None, bf16: bool | None = None, iters: int = PROFILE_ITERS,
                    top: int = TOP) -> tuple[list[dict], dict]:
    """The profile's CSV rows for every row of the speed table of `algos` (those named in
    `only`, if given), and the rows that failed (`failed`: built or warmed up, with their
    errors, as the speed table reports them)."""
    import torch

    from .models import set_precision
    from .peers import learn2learn_version
    from .speed import FULL, _built, _synced, _torch_threads, build, rows_of, warmed

    keys = rows_of(algos, device, learn2learn_version() is not None, compiled, bf16, only)
    rows = []
    with _torch_threads(threads):
        set_precision("off")
        combos, failed = _built(keys, lambda k: _synced(build(*k, device), device))
        _, _, late = warmed(combos, FULL["warmup"])
        failed.update(late)
        for key in (k for k in keys if k not in failed):
            found = profiled(combos[key], device, iters)
            total = sum(s for _, _, s in found)
            listed = [("all", sum(c for _, c, _ in found), total)] + found[:top]
            for rank, (name, calls, seconds) in enumerate(listed):
                rows.append({"algo": key[0], "preset": key[1], "implementation": key[2], "device": device.type,
                             "rank": rank, "name": name, "calls_per_meta_iter": round(calls / iters, 2),
                             "ms_per_meta_iter": round(1000 * seconds / iters, 4),
                             "share": round(seconds / total, 4) if total else 0.0})
    return rows, {"iters": iters, "failed": failed, "torch": torch.__version__}


def profile_table(rows: list[dict], device) -> str:
    """Each row's summary line, then its costliest kernels or operators."""
    what = "kernels" if device.type == "cuda" else "operator calls"
    lines = []
    for r in rows:
        if r["rank"] == 0:
            lines.append(f"{r['algo']} on {r['preset']}, {r['implementation']}: {r['calls_per_meta_iter']:g} {what}, "
                         f"{r['ms_per_meta_iter']:g} ms per meta-iteration")
        else:
            name = r["name"] if len(r["name"]) <= 90 else r["name"][:87] + "..."
            lines.append(f"  {100 * r['share']:5.1f}%  {r['ms_per_meta_iter']:9.4f} ms  "
                         f"x{r['calls_per_meta_iter']:<7g} {name}")
    return "\n".join(lines)


def main_profile(args, algos: list[str], only: list[str] | None, device) -> int:
    from .speed import _written

    out = Path(args.out) if args.out else Path("results") / "speed" / "profile" / f"{device.type}.csv"
    rows, run = measure_profile(algos, device, only=only, threads=args.threads, compiled=args.compiled,
                                bf16=args.bf16)
    print(f"{device.type}, torch {run['torch']}; each row warmed up, then {run['iters']} meta-iterations under "
          f"torch.profiler: " + ("its kernels' time on the GPU" if device.type == "cuda" else
                                 "its operators' own CPU time") + ", per meta-iteration, the costliest listed")
    print(profile_table(rows, device))
    return _written(out, rows, run["failed"])
