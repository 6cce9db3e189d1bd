"""`python -m bench speed`: time and peak memory per meta-iteration, for each algorithm at
its paper settings and each implementation of it, side by side in one run.

The cases: Reptile and joint training on `omniglot-5w1s` (the Reptile paper's Omniglot
5-way 1-shot settings), FOMAML and MAML on `omniglot-5w1s-maml` (the MAML paper's: one
inner SGD step with alpha 0.4, meta-batch 32, a held-out query), and Reptile on `sine`
(the public Reptile sine example). The implementations of each:

- `batched` and `serial`: the suite's own meta-iteration (`bench.runner.meta_iteration`:
  draw the meta-batch, the algorithm's meta-gradient, the outer step), with the tasks of
  the meta-batch under `torch.func.vmap` or one after another;
- `compiled`: the preset's own path (batched or serial) with `compile = true`
  (torch.compile); by default for the cases that compile in seconds (the CNNs' serial
  paths, which compile each inner step or each task, and the sine MLP), for every case
  with `--compiled` (the CNNs' batched paths compile their whole meta-iteration: minutes
  on the CPU), for none with `--no-compiled`; `first_call_s` shows the compilation;
- `channels-last`: the preset's own path with `channels_last = true` (convolution weights
  and images in NHWC order), for the CNNs, on CUDA for the serial paths only
  (`bench.models.check_layout`); `compiled-cl`: the same compiled, where `compiled` runs,
  on the CPU; `serial-compiled-cl`: for the cases whose preset's own path is the batched
  one (FOMAML, MAML), the serial path compiled task by task in channels-last order, on
  the CPU unless `--no-compiled`;
- `matmul`: the preset's own path with `conv_matmul = true` (every convolution one matrix
  product over the image patches), for the CNNs;
- `bf16`: the preset's own path with `autocast = "bf16"` (convolutions and linear layers
  in bfloat16; it changes results slightly); by default on CUDA only, everywhere with
  `--bf16`;
- `graph` and `graph-batched`: the preset's own path, and the batched path, with
  `cuda_graph = true` (the meta-iteration recorded as a CUDA graph once and replayed:
  `bench.graphs`); on CUDA only (`graph-batched` only where the preset's own path is the
  serial one); `compiled-graph`: the preset's own path with both `compile` and
  `cuda_graph`, on CUDA where `compiled` runs; for the CNNs there, `compiled-graph-cl`
  (serial paths only) and `compiled-graph-matmul`: the same with `channels_last` or
  `conv_matmul`, candidates for a faster float32 step. (`cudnn_benchmark`, the third,
  has no row: cuDNN keeps one plan per convolution shape for the whole process,
  whichever setting chose it first, so a row in this process would run the plans the
  other rows' heuristics chose; `scripts/gpu_check.sh` times it in a run of its own.)
- `seeds`: SEEDS (5) runs of the preset's own path trained together (`run --seeds 0-4
  --batch-seeds`: the runs stacked on a leading dimension under vmap); its time is per
  run, the group's divided by 5, and its peak memory the group's;
- `naive`: the same maths written as public meta-learning code usually is
  (`bench.naive`: a deepcopy and an optimizer per task, plain autograd, a loop over the
  tasks); for `sine`, the public example's own loop, its NumPy task sampling included;
- `learn2learn`: learn2learn's MAML and first-order MAML (`bench.peers`), when installed;
- `passes`: not an implementation but the floor under all of them: the meta-iteration's
  forward and backward passes of the plain module on its minibatches (and FOMAML's
  queries), with no optimizer, copy or update, for Reptile, joint training and FOMAML.

Inputs are random data of the task's shape on the device (no data set needed): every
implementation of a case draws its episodes from its own sampler with the same seed and
runs the same number of meta-iterations, so all see the same episodes in the same order
and start from the same initialisation (the sine example draws its own tasks, from the
same distribution). The suite's Reptile preset carries the inner Adam state from task
to task, where the naive code starts a fresh optimizer per task: the same operations
on other numbers, so the same time. All are timed in one process, round-robin (one
round runs every implementation in turn), so that a noisy, shared machine slows them
alike; a case whose meta-iteration is short runs several timed meta-iterations per
round. The time is the median over all timed meta-iterations after the warm-up, with a
host sync after each (on a GPU, `torch.cuda.synchronize`). The default runs 8 rounds
after 2 warm-up ones, fewer (3 at least) once the rounds have taken a minute; `--quick`
runs 2 after 1. A speed-up is paired by round: within each round the ratio of the two
rows' medians is one observation, and the speed-up is the median of the rounds' ratios
(so it may differ a little from the ratio of the two rows' overall medians), with its
95% interval from the ordered ratios (`speedup`: at least 6 rounds); an interval that
holds 1 means these rounds cannot tell the two rows apart. `--threads` sets torch's CPU
threads for every implementation alike: on a machine other jobs keep busy, one thread
avoids the threads waiting on each other.

Arithmetic: `gflop` is a case's work per meta-iteration, its matrix products and
convolutions forward and backward as the naive implementation computes them, counted by
`torch.utils.flop_counter` (3.93 GFLOP for Omniglot Reptile); `gflop_per_s` is that over
a row's time, the same work for every row of a case (a row that does more, MAML's
recomputing backward, shows a lower rate); `matmul_gflop_per_s` is the device's rate on
one large float32 matrix product (`yardstick`: in the faster of `torch.mm` and, on the
CPU, the same product as a 1x1 convolution, which oneDNN computes; `matmul_form` says
which), timed in the same rounds as the rows, the yardstick for theirs: what fraction of
the device's arithmetic an implementation uses.

Peak memory (MiB, 2**20 bytes) is what one meta-iteration needs beyond what was set up
before it (model, data, optimizers), measured after the timing, one implementation at a
time, each warmed up already: on a GPU, `torch.cuda.max_memory_allocated` above the
memory allocated before the meta-iteration; on the CPU, which has no allocator counter,
the growth of the process's peak resident set (Linux VmHWM, reset just before) after
glibc's free heap pages have gone back to the system (`malloc_trim`), so that the
meta-iteration must fault in all it uses. That includes the allocator's slack: compare
rows of one table rather than read the numbers as exact bytes (as `python -m bench
memory`). Measured this way in one process, the rows agree within a few MiB with each
implementation measured alone in a fresh process. Without Linux's /proc and glibc the
CPU column is left empty.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

ALGOS = ("reptile", "fomaml", "maml", "joint")
PRESETS = {"reptile": ("omniglot-5w1s", "sine"), "fomaml": ("omniglot-5w1s-maml",),
           "maml": ("omniglot-5w1s-maml",), "joint": ("omniglot-5w1s",)}
"""Each algorithm's paper settings (and the sine example for Reptile)."""
IMPLEMENTATIONS = ("batched", "serial", "channels-last", "matmul", "compiled", "compiled-cl", "serial-compiled-cl",
                   "bf16", "graph", "graph-batched", "compiled-graph", "compiled-graph-cl", "compiled-graph-matmul",
                   "seeds", "naive", "learn2learn", "passes")
GRAPH_VARIANTS = {"compiled-graph": {}, "compiled-graph-cl": {"channels_last": True},
                  "compiled-graph-matmul": {"conv_matmul": True}}
"""The rows compiled and replayed from a CUDA graph, and what each sets beyond that."""
SEEDS = 5
"""Runs trained together in the `seeds` row (its time is per run: the group's divided by SEEDS)."""
SETTINGS = ("preset", "task", "ways", "shots", "train_shots", "query_shots", "tail", "inner_optimizer",
            "inner_lr", "inner_steps", "inner_batch", "inner_state", "meta_batch", "meta_optimizer", "meta_lr")
COLUMNS = ("algo", "implementation", "device", *SETTINGS, "threads", "torch", "timed_iters",
           "ms_per_meta_iter", "first_call_s", "peak_mem_mb", "gflop", "gflop_per_s", "matmul_gflop_per_s",
           "matmul_form", "speedup_vs_naive", "speedup_vs_naive_ci95_low",
           "speedup_vs_naive_ci95_high", "speedup_vs_learn2learn", "speedup_vs_learn2learn_ci95_low",
           "speedup_vs_learn2learn_ci95_high")
FULL = {"warmup": 2, "rounds": 8, "budget_s": 60.0}
QUICK = {"warmup": 1, "rounds": 2, "budget_s": None}
MIN_ROUNDS = 3  # the budget stops the rounds after this many at the earliest
ROUND_S = 0.05  # a case's timed meta-iterations per round fill at least this long (at most MAX_REPS)
MAX_REPS = 20

Case = tuple[str, str]  # (algo, preset)


def cases(algos: list[str]) -> list[Case]:
    return [(a, p) for a in algos for p in PRESETS[a]]


PASSES = ("reptile", "joint", "fomaml")
"""The algorithms whose `passes` row is their forward and backward passes alone (MAML's
second-order passes have no plain-module equivalent)."""


def compiles_quickly(algo: str, preset: str) -> bool:
    """Whether the preset's own path compiles in seconds: each inner step of the CNNs'
    serial paths, or each task of FOMAML's and MAML's (`bench.runner.compile_unit`), or
    the sine MLP's whole meta-iteration; a CNN's whole meta-iteration (the batched paths)
    takes minutes on the CPU."""
    from algorithms import ALGORITHMS

    from .runner import compile_unit

    cfg = _config(algo, preset)
    return cfg.task == "sine" or compile_unit(ALGORITHMS[algo], cfg) != "whole"


def implementations(algo: str, preset: str, learn2learn: bool, compiled: bool | None = None,
                    bf16: bool = False, graph: bool = False) -> list[str]:
    """The rows of a case. compiled: True for the compiled rows of every case, False for
    none, None (the default) for those of the cases that compile in seconds."""
    from .peers import LEARN2LEARN_ALGOS

    cfg = _config(algo, preset)
    asked = compiled
    if compiled is None:
        compiled = compiles_quickly(algo, preset)

    def wanted(impl: str) -> bool:
        if impl == "learn2learn":
            return learn2learn and algo in LEARN2LEARN_ALGOS
        if impl == "compiled":
            return compiled
        if impl == "channels-last":  # on CUDA for the serial paths only (bench.models.check_layout)
            return cfg.task != "sine" and not (graph and cfg.batched)
        if impl == "compiled-cl":
            return compiled and cfg.task != "sine" and not graph
        if impl == "serial-compiled-cl":  # the batched presets' serial path, compiled task by task
            return asked is not False and cfg.batched and cfg.task != "sine" and not graph
        if impl == "matmul":
            return cfg.task != "sine"
        if impl == "bf16":
            return bf16
        if impl == "graph":
            return graph
        if impl == "graph-batched":
            return graph and not cfg.batched
        if impl == "compiled-graph":
            return graph and compiled
        if impl == "compiled-graph-cl":  # channels-last: the serial paths only on CUDA
            return graph and compiled and cfg.task != "sine" and not cfg.batched
        if impl in GRAPH_VARIANTS:
            return graph and compiled and cfg.task != "sine"
        if impl == "passes":
            return algo in PASSES
        return True
    return [i for i in IMPLEMENTATIONS if wanted(i)]


def _config(algo: str, preset: str):
    from .config import load_config
    from .runner import check_algorithm_settings

    cfg = load_config(preset, algo=algo)
    check_algorithm_settings(cfg, algo)
    return cfg


def _laid_out(cfg, impl: str):
    """cfg with the network settings that `impl` asks for, which `build_model` reads."""
    if impl in ("channels-last", "compiled-cl", "serial-compiled-cl"):
        return cfg.replace(channels_last=True)
    if impl in ("matmul", "compiled-matmul"):
        return cfg.replace(conv_matmul=True)
    if impl in GRAPH_VARIANTS:
        return cfg.replace(**GRAPH_VARIANTS[impl])
    return cfg


def _sampler(cfg, device, seed: int = 0):
    """Episodes of random data of the task's shape on the device: for Omniglot a pool of
    64 classes of 20 random binary 28x28 drawings (as many as the real ones, seed 0);
    `seed` seeds the episodes."""
    import torch

    from .episodes import ClassSampler, SineSampler

    rng = np.random.default_rng(seed)
    if cfg.task == "sine":
        return SineSampler(device, rng)
    pool = torch.randint(0, 2, (64, 20, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return ClassSampler(pool.to(device), cfg.ways, rng)


def _outer_optimizer(cfg, params):
    import torch

    return (torch.optim.SGD if cfg.meta_optimizer == "sgd" else torch.optim.Adam)(params, lr=cfg.meta_lr)


def build(algo: str, preset: str, impl: str, device) -> Callable[[], None]:
    """One implementation's meta-iteration as a closure, set up from scratch (seed 0)."""
    import torch

    from algorithms import ALGORITHMS, inner_optimizer

    from . import naive
    from .models import build_model, task_loss
    from .runner import meta_iteration, meta_step_fn, train_episodes

    cfg = _config(algo, preset)
    if impl == "naive" and cfg.task == "sine":  # the public example's own loop, its own sampling
        example = naive.SineExample(seed=0, innerstepsize=cfg.inner_lr, outerstepsize0=cfg.meta_lr,
                                    niterations=cfg.meta_iters, device=device)
        counter = iter(range(10**9))
        return lambda: example.iteration(next(counter))
    sampler = _sampler(cfg, device)
    cfg = _laid_out(cfg, impl)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)

    if impl == "seeds":  # SEEDS runs of the preset's own path trained together (run --batch-seeds)
        from .runner import stacked_step_fn

        samplers = [sampler] + [_sampler(cfg, device, seed) for seed in range(1, SEEDS)]
        runs = []
        for seed in range(SEEDS):
            torch.manual_seed(seed)
            params = {k: v.detach().clone() for k, v in build_model(cfg).to(device).named_parameters()}
            runs.append({"params": params, "opt": _outer_optimizer(cfg, list(params.values())),
                         "state": inner_optimizer(cfg).init(params)})
        compute = stacked_step_fn(ALGORITHMS[algo], task_loss(model, cfg), cfg)

        def together():
            steps = compute([r["params"] for r in runs], [r["state"] for r in runs],
                            [train_episodes(s, cfg, algo) for s in samplers])
            for r, step in zip(runs, steps):
                for k, p in r["params"].items():
                    p.grad = step.grad[k]
                r["opt"].step()
                r["state"] = step.inner_state
        return together

    if impl in ("batched", "serial", "channels-last", "matmul", "compiled", "compiled-cl", "serial-compiled-cl",
                "bf16", "graph", "graph-batched", *GRAPH_VARIANTS):
        # the others run the preset's own path (batched or serial); channels_last and conv_matmul
        # are set above
        if impl in ("batched", "serial"):
            cfg = cfg.replace(batched=impl == "batched")
        elif impl in ("compiled", "compiled-cl"):
            cfg = cfg.replace(compile=True)
        elif impl == "serial-compiled-cl":
            cfg = cfg.replace(compile=True, batched=False)
        elif impl == "bf16":  # in bfloat16
            cfg = cfg.replace(autocast="bf16")
        elif impl == "graph":  # replayed from a CUDA graph
            cfg = cfg.replace(cuda_graph=True)
        elif impl == "graph-batched":
            cfg = cfg.replace(cuda_graph=True, batched=True)
        elif impl in GRAPH_VARIANTS:  # compiled, its kernels replayed from a CUDA graph
            cfg = cfg.replace(compile=True, cuda_graph=True)
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        compute = meta_step_fn(ALGORITHMS[algo], task_loss(model, cfg), cfg)
        opt = _outer_optimizer(cfg, list(params.values()))
        box = {"state": inner_optimizer(cfg).init(params)}

        def suite():
            step = meta_iteration(compute, algo, params, box["state"], sampler, opt, cfg)
            box["state"] = step.inner_state
        return suite

    if impl == "passes":  # the arithmetic every implementation shares: the loss passes, nothing else
        criterion = naive.loss_fn(cfg)

        def passes():
            episodes = train_episodes(sampler, cfg, algo)
            xs, ys = episodes.inner_data()
            steps = 1 if algo == "joint" else xs.shape[1]
            batches = [(xs[t, s], ys[t, s]) for t in range(xs.shape[0]) for s in range(steps)]
            if algo == "fomaml":
                batches += [(episodes.query_x[t], episodes.query_y[t]) for t in range(xs.shape[0])]
            for x, y in batches:
                model.zero_grad(set_to_none=True)
                criterion(model(x), y).backward()
        return passes

    if impl == "naive":
        if algo in ("reptile", "joint"):
            update = naive.reptile if algo == "reptile" else naive.joint
            return lambda: update(model, train_episodes(sampler, cfg, algo), cfg, cfg.meta_lr)
        opt = _outer_optimizer(cfg, model.parameters())
        update = naive.maml if algo == "maml" else naive.fomaml
        return lambda: update(model, opt, train_episodes(sampler, cfg, algo), cfg)

    if impl == "learn2learn":
        from .peers import learn2learn_maml, learn2learn_step

        meta = learn2learn_maml(model, cfg, first_order=algo == "fomaml")
        opt = _outer_optimizer(cfg, meta.parameters())
        return lambda: learn2learn_step(meta, opt, train_episodes(sampler, cfg, algo), cfg)
    raise ValueError(f"unknown implementation {impl!r}")


def _synced(fn: Callable[[], None], device) -> Callable[[], None]:
    """fn, then a wait for the GPU's queued work, so the clock covers it."""
    if device.type != "cuda":
        return fn
    import torch

    def run():
        fn()
        torch.cuda.synchronize(device)
    return run


class Timings(NamedTuple):
    """What `time_all` measured, by (algo, preset, impl): the median seconds per
    meta-iteration over every timed one, how many were timed, the rounds run, the seconds
    of the first call (compilation included), each round's median, and the rows whose
    first call failed (their error, one line), which were not timed."""
    median: dict
    count: dict
    rounds: int
    first: dict
    by_round: dict
    failed: dict


def _built(keys: list, make: Callable) -> tuple[dict, dict]:
    """make(key) for each key: the rows built, and the errors of those that could not be."""
    built, failed = {}, {}
    for key in keys:
        try:
            built[key] = make(key)
        except Exception as e:  # noqa: BLE001 (reported with the table, and the command fails)
            failed[key] = _one_line(e)
    return built, failed


def _one_line(exc: BaseException) -> str:
    """An exception as one line: its type and its message's first line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def warmed(combos: dict, warmup: int) -> tuple[dict, dict, dict]:
    """Each of `combos` called `warmup` times (once at least), in turn: the first-call
    costs (compilation, allocations, kernel selection, a CUDA graph's recording). Returns
    the seconds of each one's last and first call, and the errors of those that raised
    (one line each), which are not called again."""
    last: dict = {}
    first: dict = {}
    failed: dict = {}
    for key, fn in combos.items():
        try:
            for _ in range(max(warmup, 1)):
                t0 = time.perf_counter()
                fn()
                last[key] = time.perf_counter() - t0
                first.setdefault(key, last[key])
        except Exception as e:  # noqa: BLE001 (reported with the table, and the command fails)
            failed[key] = _one_line(e)
            last.pop(key, None)
            first.pop(key, None)
    return last, first, failed


def time_all(combos: dict, warmup: int, rounds: int, budget_s: float | None = None) -> Timings:
    """Every (algo, preset, impl) of `combos` timed round-robin: `rounds` rounds, or fewer,
    MIN_ROUNDS at least, once the rounds have taken `budget_s` (a slow or busy machine).
    All implementations of a case run the same number of meta-iterations (so they see the
    same episodes). A row whose warm-up raises is left out, its error kept (`failed`):
    one implementation a device cannot run does not cost the others their times."""
    last, first, failed = warmed(combos, warmup)
    combos = {k: fn for k, fn in combos.items() if k not in failed}
    reps = {}
    for key in combos:
        slowest = max(t for k, t in last.items() if k[:2] == key[:2])
        reps[key] = min(MAX_REPS, max(1, math.ceil(ROUND_S / max(slowest, 1e-9))))
    times: dict = {k: [] for k in combos}  # per key, one list of times per round
    start, done = time.perf_counter(), 0
    while done < rounds and not (budget_s is not None and done >= MIN_ROUNDS
                                 and time.perf_counter() - start > budget_s):
        for key, fn in combos.items():
            times[key].append([])
            for _ in range(reps[key]):
                t0 = time.perf_counter()
                fn()
                times[key][-1].append(time.perf_counter() - t0)
        done += 1
    return Timings({k: statistics.median(t for r in ts for t in r) for k, ts in times.items()},
                   {k: sum(map(len, ts)) for k, ts in times.items()}, done, first,
                   {k: [statistics.median(r) for r in ts] for k, ts in times.items()}, failed)


MIN_CI_ROUNDS = 6
"""Rounds a 95% interval of a speed-up needs (fewer: no two of the rounds' ordered ratios
bracket their median with 95% confidence)."""


def speedup(base: list[float], faster: list[float]) -> tuple[float, tuple[float, float] | None]:
    """The speed-up of `faster` over `base` from their round medians, paired by round (a
    round times both rows within seconds, so its ratio is one observation however busy
    the machine was then): the median of the rounds' ratios base / faster, and the 95%
    interval of that median that no assumption of a distribution needs (scipy's
    `quantile_test`: two of the ordered ratios), None with fewer than MIN_CI_ROUNDS rounds."""
    from scipy import stats

    ratios = np.asarray(base, dtype=float) / np.asarray(faster, dtype=float)
    point = float(np.median(ratios))
    if len(ratios) < MIN_CI_ROUNDS:
        return point, None
    ci = stats.quantile_test(ratios, q=point, p=0.5).confidence_interval(0.95)
    return point, (float(ci.low), float(ci.high))


def _speedup_columns(name: str, base: list[float] | None, faster: list[float]) -> dict:
    """`name` (the speed-up, rounded to 0.01), `name`_ci95_low and `name`_ci95_high (empty
    where there is no interval, or no `base` row at all)."""
    if base is None:
        return {name: "", f"{name}_ci95_low": "", f"{name}_ci95_high": ""}
    point, interval = speedup(base, faster)
    low, high = (round(v, 2) for v in interval) if interval is not None else ("", "")
    return {name: round(point, 2), f"{name}_ci95_low": low, f"{name}_ci95_high": high}


# Peak memory -------------------------------------------------------------------------

def _status_kib(field: str) -> int | None:
    """A `VmXXX:` field of /proc/self/status in KiB (None where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _malloc_trim() -> bool:
    """Hand the C heap's free pages back to the system (glibc); False where impossible."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def _reset_peak_rss() -> bool:
    """Reset this process's peak resident set (VmHWM) to its current size (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_peak(fn: Callable[[], None]) -> float | None:
    """MiB by which the peak resident set grows during one call of fn, after the freed
    heap has gone back to the system (so the call must fault in what it needs); None
    where Linux's /proc or glibc's malloc_trim is missing."""
    gc.collect()
    if not _malloc_trim():
        return None
    base = _status_kib("VmRSS")
    if base is None or not _reset_peak_rss():
        return None
    fn()
    peak = _status_kib("VmHWM")
    return None if peak is None else max(peak - base, 0) / 1024


def cuda_peak(fn: Callable[[], None], device) -> float:
    """MiB allocated at the peak of one call of fn above what was allocated before it."""
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


# Arithmetic --------------------------------------------------------------------------

def arithmetic(fn: Callable[[], None]) -> float:
    """GFLOP of one call of fn: its matrix products and convolutions, forward and backward,
    as `torch.utils.flop_counter` counts them (elementwise work, batch norm and optimizer
    updates, is not counted: a small part of these networks' arithmetic)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


YARDSTICK = ("matmul", "", "yardstick")
"""`yardstick`'s key among the timed rows: timed in the same rounds, so under the same load."""
MATMUL_N = {"cpu": 2048, "cuda": 8192}
"""The size of `yardstick`'s matrices by device type (2048: some 85 ms on a 2-core CPU; a GPU reaches its
rate only with larger ones)."""


def matmul_forms(a, b) -> dict[str, Callable[[], "torch.Tensor"]]:
    """The float32 product a @ b (n x k by k x m, a contiguous) in the forms torch computes
    it with different libraries, as closures returning it: `torch.mm` (the BLAS torch was
    built with: MKL on x86 CPUs, cuBLAS on GPUs) and, on the CPU, the same product as a 1x1
    convolution, which torch runs with oneDNN (the rows' convolutions' library): n
    positions of k channels each, m output channels. The two can differ by a factor of
    two: on an AMD EPYC with AVX-512, MKL's kernel ran 256-bit AVX2 instructions at
    210 GFLOP/s where oneDNN reached 446."""
    import torch
    import torch.nn.functional as F

    forms = {"torch.mm": lambda: torch.mm(a, b)}
    if a.device.type == "cpu" and torch.backends.mkldnn.is_available():
        n, k = a.shape
        positions = a.view(1, 1, n, k).permute(0, 3, 1, 2)  # (1, k, 1, n), channels-last strides
        kernel = b.t().contiguous().view(b.shape[1], k, 1, 1)

        def conv() -> torch.Tensor:
            return F.conv2d(positions, kernel).permute(0, 2, 3, 1).reshape(n, b.shape[1])
        forms["1x1 convolution"] = conv
    return forms


def yardstick(device) -> tuple[Callable[[], None], int, dict[str, float]]:
    """The device's arithmetic at its best, to measure the rows' against: one n x n float32
    matrix product (2 n**3 FLOP; n from MATMUL_N) in the fastest of `matmul_forms`, as a
    closure to time (synced on a GPU); n; and each form's rate in GFLOP/s from a short
    trial that picked it (`time_all`: 3 round-robin rounds after one call each). It
    computes with the precision flags as the caller set them (`measure`: float32, no
    TensorFloat-32)."""
    import torch

    n = MATMUL_N.get(device.type, MATMUL_N["cpu"])
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device) for _ in range(2))
    forms = {("matmul", "", name): _synced(fn, device) for name, fn in matmul_forms(a, b).items()}
    rates = {key[2]: _matmul_rate(n, t) for key, t in time_all(forms, warmup=1, rounds=3).median.items()}
    best = max(rates, key=rates.get)
    return forms[("matmul", "", best)], n, {name: _g(r) for name, r in sorted(rates.items(), key=lambda kv: -kv[1])}


def _matmul_rate(n: int, seconds: float) -> float:
    """GFLOP/s of one n x n by n x n matrix product (2 n**3 FLOP) that took `seconds`."""
    return 2 * n**3 / seconds / 1e9


def _g(x: float) -> float:
    """Four significant digits."""
    return float(f"{x:.4g}")


# The table ---------------------------------------------------------------------------

def _plan(quick: bool, rounds: int | None) -> dict:
    """Warm-up calls, rounds and time budget: FULL, QUICK, or exactly `rounds` rounds."""
    plan = dict(QUICK if quick else FULL)
    if rounds is not None:
        plan.update(rounds=rounds, budget_s=None)
    return plan


@contextmanager
def _torch_threads(threads: int | None):
    """torch's CPU threads set to `threads` (None: as they are) inside, the caller's after:
    the commands run in-process too (tests)."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def rows_of(algos: list[str], device, learn2learn: bool, compiled: bool | None = None, bf16: bool | None = None,
            only: list[str] | None = None) -> list[tuple[str, str, str]]:
    """The (algo, preset, implementation) rows of the table of `algos` on `device`
    (`implementations`), those named in `only` alone when it is given."""
    bf16 = device.type == "cuda" if bf16 is None else bf16
    return [(a, p, i) for a, p in cases(algos)
            for i in implementations(a, p, learn2learn, compiled, bf16, device.type == "cuda")
            if only is None or i in only]


def measure(algos: list[str], device, *, quick: bool = False, rounds: int | None = None,
            threads: int | None = None, compiled: bool | None = None, bf16: bool | None = None,
            only: list[str] | None = None) -> tuple[list[dict], dict]:
    """Every case and implementation of `algos`, timed and measured; returns the CSV rows
    and what the run did: `warmup`, `rounds`, learn2learn's version (None when it is not
    installed), `matmul_n`, the size of the yardstick's matrices, and `matmul_forms`, the
    trial rates of its forms, the timed one first (`yardstick`), and `failed`, the rows
    that could not be built or run, by (algo, preset, impl), with their errors (no row of
    theirs is returned; the naive rows must run). `rounds` replaces the default (or
    --quick's) and its time budget; `only` names the implementations to time (the naive
    rows, the speed-ups' base and the arithmetic's, always run)."""
    import torch

    from .models import set_precision
    from .peers import learn2learn_version

    plan = _plan(quick, rounds)
    l2l = learn2learn_version()
    keys = rows_of(algos, device, l2l is not None, compiled, bf16, None if only is None else [*only, "naive"])
    with _torch_threads(threads):
        threads = torch.get_num_threads()
        set_precision("off")  # float32 for the peers' rows too (the suite's own set it in forward)
        combos, failed = _built(keys, lambda k: _synced(build(*k, device), device))
        product, n, forms = yardstick(device)
        timed = time_all({**combos, YARDSTICK: product}, plan["warmup"], plan["rounds"], plan["budget_s"])
        failed.update(timed.failed)
        keys = [k for k in keys if k not in failed]
        peaks = {k: cuda_peak(combos[k], device) if device.type == "cuda" else cpu_peak(combos[k]) for k in keys}
        # every case has a naive row: its arithmetic is the case's, whatever implementation does it
        flops = {case: arithmetic(combos[(*case, "naive")]) for case in cases(algos)}
    rate = _matmul_rate(n, timed.median[YARDSTICK])

    rows = []
    for algo, preset, impl in keys:
        key, per = (algo, preset, impl), (SEEDS if impl == "seeds" else 1)  # `seeds`: per run
        cfg, t = _config(algo, preset), timed.median[key] / per
        per_round = [r / per for r in timed.by_round[key]]
        naive, l2l_key = (algo, preset, "naive"), (algo, preset, "learn2learn")
        peak = peaks.get(key)
        rows.append({
            "algo": algo, "implementation": impl, "device": device.type,
            **{s: getattr(cfg, s) for s in SETTINGS if s != "preset"}, "preset": preset,
            "threads": threads, "torch": torch.__version__, "timed_iters": timed.count[key],
            "ms_per_meta_iter": round(1000 * t, 3), "first_call_s": round(timed.first[key], 3),
            "peak_mem_mb": "" if peak is None else round(peak, 1), "gflop": _g(flops[(algo, preset)]),
            "gflop_per_s": _g(flops[(algo, preset)] / t), "matmul_gflop_per_s": _g(rate),
            "matmul_form": next(iter(forms)),
            **_speedup_columns("speedup_vs_naive", timed.by_round.get(naive), per_round),
            **_speedup_columns("speedup_vs_learn2learn", timed.by_round.get(l2l_key), per_round)})
    return [{c: r[c] for c in COLUMNS} for r in rows], {"warmup": plan["warmup"], "rounds": timed.rounds,
                                                        "learn2learn": l2l, "matmul_n": n,
                                                        "matmul_forms": forms, "failed": failed}


# Evaluation ------------------------------------------------------------------------

EVAL_CASES = (("reptile", "omniglot-5w1s"), ("maml", "omniglot-5w1s-maml"), ("reptile", "sine"))
"""The evaluation protocols timed by `--evaluation`: the Reptile paper's Omniglot one (50
Adam steps, each query scored beside the support set), the MAML paper's (3 SGD steps,
transductive) and the sine example's."""
EVAL_IMPLEMENTATIONS = ("plain", "channels-last", "matmul", "bf16", "compiled", "compiled-cl", "compiled-matmul")
EVAL_COLUMNS = ("preset", "implementation", "device", "inner_optimizer", "eval_steps", "eval_batch", "transductive",
                "tasks", "eval_chunk", "threads", "torch", "timed_evals", "ms_per_task", "first_call_s",
                "speedup_vs_plain", "speedup_vs_plain_ci95_low", "speedup_vs_plain_ci95_high")


def eval_implementations(preset: str, device, compiled: bool = True, bf16: bool = False) -> list[str]:
    """The rows of an evaluation case: the CNNs' layouts and convolutions (channels-last on
    the CPU only), bf16 on request, each compiled too unless `compiled` is False."""
    from .config import load_config

    cnn = load_config(preset).task != "sine"

    def wanted(impl: str) -> bool:
        if impl.startswith("compiled") and not compiled:
            return False
        if impl in ("channels-last", "compiled-cl"):
            return cnn and device.type == "cpu"
        if impl in ("matmul", "compiled-matmul"):
            return cnn
        return bf16 if impl == "bf16" else True
    return [i for i in EVAL_IMPLEMENTATIONS if wanted(i)]


def _eval_config(algo: str, preset: str, impl: str, device):
    """The settings of an evaluation row, and the chunk size evaluation picks with them."""
    from .evaluate import eval_chunk

    cfg = _laid_out(_config(algo, preset), impl)
    if impl.startswith("compiled"):
        cfg = cfg.replace(compile=True)
    if impl == "bf16":
        cfg = cfg.replace(autocast="bf16")
    return cfg, eval_chunk(cfg, device)


def build_evaluation(algo: str, preset: str, impl: str, device, tasks: int) -> Callable[[], None]:
    """One implementation's evaluation of `tasks` test tasks (`bench.evaluate.evaluate`,
    the preset's protocol) from the initialisation of seed 0, on random data."""
    import torch

    from algorithms import inner_optimizer

    from .evaluate import evaluate
    from .models import build_model

    cfg, _ = _eval_config(algo, preset, impl, device)
    sampler = _sampler(cfg, device)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = inner_optimizer(cfg).init(params)
    return lambda: evaluate(model, params, state, sampler, cfg, tasks)


def measure_evaluation(device, *, tasks: int, quick: bool = False, rounds: int | None = None,
                       threads: int | None = None, compiled: bool | None = None, bf16: bool | None = None
                       ) -> tuple[list[dict], dict]:
    """Every evaluation case and implementation, timed round-robin as `measure` times the
    meta-iterations; returns the CSV rows (ms per test task) and what the run did (with
    `failed`, as `measure`'s; the plain rows must run)."""
    import torch

    from .models import set_precision

    plan = _plan(quick, rounds)
    bf16 = device.type == "cuda" if bf16 is None else bf16
    keys = [(a, p, i) for a, p in EVAL_CASES
            for i in eval_implementations(p, device, compiled is not False, bf16)]
    with _torch_threads(threads):
        threads = torch.get_num_threads()
        set_precision("off")
        combos, failed = _built(keys, lambda k: _synced(build_evaluation(*k, device, tasks), device))
        timed = time_all(combos, plan["warmup"], plan["rounds"], plan["budget_s"])
    failed.update(timed.failed)
    rows = []
    for algo, preset, impl in (k for k in keys if k not in failed):
        cfg, chunk = _eval_config(algo, preset, impl, device)
        key, plain = (algo, preset, impl), (algo, preset, "plain")
        t = timed.median[key]
        rows.append({"preset": preset, "implementation": impl, "device": device.type,
                     "inner_optimizer": cfg.inner_optimizer, "eval_steps": cfg.eval_steps,
                     "eval_batch": cfg.eval_batch, "transductive": cfg.transductive, "tasks": tasks,
                     "eval_chunk": chunk, "threads": threads, "torch": torch.__version__,
                     "timed_evals": timed.count[key], "ms_per_task": round(1000 * t / tasks, 3),
                     "first_call_s": round(timed.first[key], 3),
                     **_speedup_columns("speedup_vs_plain", timed.by_round[plain], timed.by_round[key])})
    return rows, {"warmup": plan["warmup"], "rounds": timed.rounds, "failed": failed}


def speedup_text(row: dict, name: str) -> str:
    """The row's speed-up `name` with its 95% interval: "1.88 [1.75, 2.02]" ("-": none)."""
    x = row.get(name, "")
    if x in ("", None):
        return "-"
    low, high = row.get(f"{name}_ci95_low", ""), row.get(f"{name}_ci95_high", "")
    return f"{float(x):.2f}" + ("" if low in ("", None) else f" [{float(low):.2f}, {float(high):.2f}]")


def rate_text(row: dict) -> str:
    """The row's rate of arithmetic and its share of the device's matrix-product rate:
    "87.6 (41.2%)" ("-" in a table written before these columns)."""
    rate, best = row.get("gflop_per_s", ""), row.get("matmul_gflop_per_s", "")
    if rate in ("", None) or best in ("", None):
        return "-"
    return f"{_ms(float(rate))} ({_ms(100 * float(rate) / float(best))}%)"


def eval_table(rows: list[dict]) -> str:
    lines = ["| preset | implementation | ms / test task | first call s | x plain [95%] |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['implementation']} | {_ms(r['ms_per_task'])} | {r['first_call_s']:.1f} | "
                     f"{speedup_text(r, 'speedup_vs_plain')} |")
    return "\n".join(lines)


def _ms(ms: float) -> str:
    """Three significant digits, whole numbers from 100 up: 2.33, 35.5, 1,090."""
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.3g}"


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table, one line per (algorithm, preset, implementation); each
    speed-up with its 95% interval over the rounds (`speedup`)."""
    lines = ["| algorithm | preset | implementation | ms / meta-iteration | peak MiB | GFLOP/s | x naive [95%] | "
             "x learn2learn [95%] |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = r["peak_mem_mb"] if r["peak_mem_mb"] != "" else "-"
        lines.append(f"| {r['algo']} | {r['preset']} | {r['implementation']} | {_ms(r['ms_per_meta_iter'])} | "
                     f"{peak} | {rate_text(r)} | {speedup_text(r, 'speedup_vs_naive')} | "
                     f"{speedup_text(r, 'speedup_vs_learn2learn')} |")
    return "\n".join(lines)


def add_parser(sub) -> None:
    s = sub.add_parser("speed", help="time and peak memory per meta-iteration of each algorithm and "
                                     "implementation (suite batched/serial, naive, learn2learn), side by side")
    s.add_argument("--algos", default=",".join(ALGOS), help=f"comma-separated, from {', '.join(ALGOS)}")
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    s.add_argument("--quick", action="store_true",
                   help=f"{QUICK['rounds']} rounds after {QUICK['warmup']} warm-up, for tests and CI (default: "
                        f"{FULL['rounds']} after {FULL['warmup']}, fewer, {MIN_ROUNDS} at least, once the rounds "
                        f"have taken {FULL['budget_s']:.0f} s)")
    s.add_argument("--rounds", type=int, default=None,
                   help="timed rounds, exactly (replaces the default's or --quick's)")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    s.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=None,
                   help="the compiled rows (torch.compile) for every case, or with --no-compiled for none; "
                        "by default for the cases that compile in seconds (the CNNs' serial paths, each "
                        "inner step, and sine; the CNNs' batched paths and MAML: minutes)")
    s.add_argument("--bf16", action="store_true", default=None,
                   help="a `bf16` row (autocast=bf16) for every case; the default on CUDA")
    s.add_argument("--implementations", default=None,
                   help="comma-separated rows to run, from " + ", ".join(IMPLEMENTATIONS)
                        + " (default: all that apply; the naive rows, the speed-ups' base, always run in the table)")
    s.add_argument("--profile", action="store_true",
                   help="profile the rows instead (torch.profiler, after each row's warm-up): per meta-iteration, "
                        "the GPU's kernels or the CPU's operators, how many, their time and the costliest; "
                        "writes results/speed/profile/<device>.csv")
    s.add_argument("--evaluation", action="store_true",
                   help="time the evaluation protocols instead (ms per test task: each preset's fine-tuning "
                        "and scoring, plain, compiled, with matrix-product convolutions, ...)")
    s.add_argument("--tasks", type=int, default=None,
                   help="test tasks per timed evaluation, with --evaluation (default 100, a periodic evaluation's; "
                        "the final one adapts its tasks 25 at a time on the CPU, 1000 on a GPU)")
    s.add_argument("--out", default=None,
                   help="CSV to write (default: results/speed/<device>.csv; with --evaluation, "
                        "results/speed/evaluation/<device>.csv)")


def parse_algos(spec: str) -> list[str]:
    from .config import parse_names

    return parse_names("--algos", spec, list(ALGOS), "algorithm for speed")


def parse_implementations(spec: str | None) -> list[str] | None:
    """The --implementations list (None: all), each name checked."""
    from .config import parse_names

    return None if spec is None else parse_names("--implementations", spec, list(IMPLEMENTATIONS), "implementation")


def main_speed(args) -> int:
    import torch

    from .errors import ConfigError
    from .peers import MISSING
    from .runner import resolve_device

    algos = parse_algos(args.algos)
    if args.rounds is not None and args.rounds < 1:
        raise ConfigError("--rounds must be 1 or more")
    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads must be 1 or more")
    if args.tasks is not None and not args.evaluation:
        raise ConfigError("--tasks counts the test tasks of --evaluation: add --evaluation or drop --tasks")
    if args.tasks is not None and args.tasks < 1:
        raise ConfigError("--tasks must be 1 or more")
    if args.evaluation and (args.profile or args.implementations is not None):
        raise ConfigError("--evaluation times every evaluation protocol: drop --profile and --implementations")
    only = parse_implementations(args.implementations)
    device = resolve_device(args.device)
    if args.evaluation:
        return _main_evaluation(args, device)
    if only is not None and not rows_of(algos, device, True, args.compiled, args.bf16, only):
        raise ConfigError(f"--implementations {args.implementations}: no such row of {', '.join(algos)} runs on "
                          f"{device.type}; its rows: " + ", ".join(dict.fromkeys(
                              i for *_, i in rows_of(algos, device, True, args.compiled, args.bf16))))
    if args.profile:
        from .profile import main_profile

        return main_profile(args, algos, only, device)
    out = Path(args.out) if args.out else Path("results") / "speed" / f"{device.type}.csv"
    rows, run = measure(algos, device, quick=args.quick, rounds=args.rounds, threads=args.threads,
                        compiled=args.compiled, bf16=args.bf16, only=only)
    print(f"{device.type}, torch {torch.__version__}, {rows[0]['threads']} threads; median time per "
          f"meta-iteration over {run['rounds']} round-robin rounds after {run['warmup']} warm-up; "
          f"{_intervals_said(run['rounds'])}; peak memory: "
          + ("CUDA max_memory_allocated during one meta-iteration" if device.type == "cuda" else
             "growth of the peak resident set during one meta-iteration (allocator slack included)"))
    print(_arithmetic_said(rows, run["matmul_n"], run["matmul_forms"]))
    print(table(rows))
    print(MISSING + ": no learn2learn rows" if run["learn2learn"] is None else f"learn2learn {run['learn2learn']}")
    return _written(out, rows, run["failed"])


def _arithmetic_said(rows: list[dict], n: int, forms: dict[str, float]) -> str:
    """What the GFLOP/s column is, with each case's arithmetic and the device's yardstick."""
    per_case = dict.fromkeys(f"{r['algo']} on {r['preset']} {r['gflop']:g}" for r in rows)
    timed, *others = forms
    faster = ", the faster form here" if others else ""
    tried = "".join(f"; {name} {forms[name]:g} in the trial" for name in others)
    return (f"GFLOP/s: the arithmetic of a meta-iteration (its matrix products and convolutions as the naive "
            f"implementation computes them, GFLOP: {', '.join(per_case)}) over the row's time, and in brackets its "
            f"share of this device's float32 {n}x{n} matrix product as {timed}{faster}, "
            f"{rows[0]['matmul_gflop_per_s']:g} GFLOP/s in the rounds{tried}")


def _intervals_said(rounds: int) -> str:
    """What the printed table's brackets are, or why it has none."""
    if rounds >= MIN_CI_ROUNDS:
        return "speed-ups are the rounds' median ratios, [their 95% intervals]"
    return (f"speed-ups are the rounds' median ratios, without intervals: they need {MIN_CI_ROUNDS} rounds or "
            f"more (--rounds {MIN_CI_ROUNDS})")


def _main_evaluation(args, device) -> int:
    import torch

    tasks = args.tasks or 100
    out = Path(args.out) if args.out else Path("results") / "speed" / "evaluation" / f"{device.type}.csv"
    rows, run = measure_evaluation(device, tasks=tasks, quick=args.quick, rounds=args.rounds,
                                   threads=args.threads, compiled=args.compiled, bf16=args.bf16)
    print(f"{device.type}, torch {torch.__version__}, {rows[0]['threads']} threads; median time of an evaluation "
          f"of {tasks} test tasks over {run['rounds']} round-robin rounds after {run['warmup']} warm-up, "
          f"per task; {_intervals_said(run['rounds'])}")
    print(eval_table(rows))
    return _written(out, rows, run["failed"])


def _written(out: Path, rows: list[dict], failed: dict) -> int:
    """The rows that could not be timed said, the others written to `out`; the exit status."""
    from .results import write_csv

    for (algo, preset, impl), error in failed.items():
        print(f"not timed: {algo} on {preset}, {impl}: {error}")
    if not rows:
        print(f"nothing to write to {out}")
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out, rows)
    print(f"wrote {out}")
    return 1 if failed else 0
