"""`run(config)`: meta-train one algorithm with one seed, evaluate, write the run folder.

Read top to bottom: check the settings, the device, the run folder and the data
(any bad input fails here, before a file is written), create the run folder or
load its checkpoint, then the meta-training loop: sample a meta-batch, ask the
algorithm for the meta-gradient, let the outer optimizer apply it with the
linearly annealed step size, log, evaluate now and then, checkpoint now and then;
finally evaluate on the test split and save. The run folder's state marker says
running, finished or failed throughout; a non-finite loss stops the run.
`run_seeds` does the same for several seeds, one after another or trained together
(their computation batched over the runs).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from algorithms import ALGORITHMS, fomaml, inner_optimizer, maml, parse_terms
from algorithms.inner import compile_fn, compiled_units
from algorithms.base import MetaStep

from .checkpoint import FORMAT, CheckpointClock, resume_point, rng_states, set_rng_states
from .config import Config, _unknown, algo_settings, available_presets
from .episodes import Episode
from .errors import BenchError, ConfigError, TrainingDiverged
from .evaluate import evaluate, evaluate_splits, sine_predictions
from .graphs import GraphedFunction, check_device
from .models import build_model, check_layout, laid_out, set_precision, task_loss
from .plugins import load_algorithms, uses_query
from .protocols import eval_config, protocols, scored
from .results import (FAILED, FINISHED, RUNNING, CHECKPOINT, MetricsWriter, RunLock, check_writable, clear_run,
                      clear_temporaries, environment, has_run, read_state, run_dir, run_method,
                      save_checkpoint, write_csv, write_json, write_state)
from .tasks import TaskData, check_sizes


def resolve_device(name: str | None) -> torch.device:
    """CUDA when present, unless a device is named; naming an absent GPU is an error."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise BenchError(f"unknown device {name!r}: use --device cpu or --device cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda, but PyTorch sees no GPU (torch.cuda.is_available() is False): "
                         "use --device cpu or install a CUDA build of torch")
    return torch.device(name)


def meta_lr_at(cfg: Config, it: int) -> float:
    """Linear annealing from meta_lr to meta_lr_final, as the reference code
    (frac_done = it / meta_iters)."""
    frac = it / cfg.meta_iters
    return (1 - frac) * cfg.meta_lr + frac * cfg.meta_lr_final


def snapshot_steps(cfg: Config) -> set[int]:
    """The meta-iterations (done) at which the initialisation is saved: `snapshots` + 1
    evenly spaced ones from 0 to meta_iters (none when snapshots is 0)."""
    if not cfg.snapshots:
        return set()
    return {round(i * cfg.meta_iters / cfg.snapshots) for i in range(cfg.snapshots + 1)}


def train_episodes(sampler, cfg: Config, algo: str) -> Episode:
    """A meta-batch for meta-training: train_shots examples per class and `inner_steps`
    minibatches of them. For FOMAML and MAML the last of the `inner_steps` minibatches
    is the query ("tail"), as in the reference code and the paper's g_k: with a shared
    tail it is the last planned minibatch of the same examples; with a separate tail it
    is `query_shots` further examples per class, held out from the other minibatches."""
    if not uses_query(algo):
        return sampler.sample(cfg.meta_batch, cfg.train_shots, 0, cfg.inner_steps, cfg.inner_batch)
    if cfg.tail == "separate":
        return sampler.sample(cfg.meta_batch, cfg.train_shots, cfg.query_shots, cfg.inner_steps - 1,
                              cfg.inner_batch)
    return sampler.sample(cfg.meta_batch, cfg.train_shots, 0, cfg.inner_steps, cfg.inner_batch).shared_tail()


def _executed(fn, cfg: Config, unit: str = "whole"):
    """fn(params, inner_state, tensors) -> (grad, inner_state, logs) as the run's settings
    execute it, always under torch.no_grad (the torch.func transforms inside still
    differentiate). With cfg.compile: compiled by torch.compile, the whole computation
    when `unit` is "whole", else each plain task or inner step (`unit` "task" or "step":
    `algorithms.inner.compiled_units`; seconds to compile instead of minutes, for the
    serial paths, whose tasks and steps run outside torch.func transforms). With
    cfg.cuda_graph: recorded as a CUDA graph and replayed (`bench.graphs`: the returned
    tensors are then overwritten by the next call); with both, the graph's two warm-up
    calls compile and its recording captures the compiled kernels."""
    def plain(params, inner_state, tensors):
        with torch.no_grad(), compiled_units(unit if cfg.compile and unit != "whole" else None):
            return fn(params, inner_state, tensors)
    run = compile_fn(plain) if cfg.compile and unit == "whole" else plain
    run = GraphedFunction(run) if cfg.cuda_graph else run

    def executed(*args):
        set_precision(cfg.autocast, cfg.cudnn_benchmark)  # outside compiled code, which cannot read the flags
        return run(*args)
    return executed


def compile_unit(algorithm, cfg: Config) -> str:
    """What `compile` compiles as one piece (`_executed`): "whole", the whole
    meta-iteration, where the tasks run under vmap (batched) and for the sine MLP, whose
    steps are too short for a compiled call per step to pay (on a 2-core CPU, in one
    process, before the C++ wrapper of `compile_fn`: 1.13 ms per meta-iteration step by
    step, 0.705 whole; its whole meta-iteration compiles in 6 to 10 s); on the CNNs'
    serial paths, "task" for FOMAML and MAML, each task's adaptation and query gradient
    (MAML's second-order one), and "step" for the others, each inner step (Reptile's
    tasks take many)."""
    if cfg.batched or cfg.task == "sine":
        return "whole"
    return "task" if algorithm in (maml, fomaml) else "step"


def meta_step_fn(algorithm, loss, cfg: Config):
    """compute(params, inner_state, episodes) -> MetaStep: the algorithm's computation for
    one meta-batch with the run's settings (see `_executed` and `compile_unit`)."""
    def step(params, inner_state, tensors):
        out = algorithm(loss, params, inner_state, Episode(*tensors), cfg)
        return out.grad, out.inner_state, out.logs
    executed = _executed(step, cfg, unit=compile_unit(algorithm, cfg))

    def compute(params, inner_state, episodes):
        grad, state, logs = executed(params, inner_state, episodes._tensors())
        return MetaStep(grad=grad, inner_state=state, logs=logs)
    return compute


def meta_iteration(compute, algo: str, params, inner_state, sampler, meta_opt, cfg: Config):
    """One meta-iteration: draw a meta-batch, compute the meta-gradient (`compute` from
    `meta_step_fn`), let the outer optimizer apply it to `params` (in place). Returns the
    algorithm's MetaStep."""
    episodes = train_episodes(sampler, cfg, algo)
    step = compute(params, inner_state, episodes)
    for k, p in params.items():
        p.grad = step.grad[k]
    meta_opt.step()
    return step


def check_algorithm_settings(cfg: Config, algo: str) -> None:
    """The settings only some algorithms read, checked for those algorithms."""
    if uses_query(algo) and cfg.inner_steps < 2:
        raise ConfigError(f"{algo} needs inner_steps >= 2 (the last inner minibatch is the query): "
                          "--set inner_steps=2 or more; one step is joint training (--algo joint)")
    if uses_query(algo) and cfg.tail == "separate" and cfg.query_shots == 0:
        raise ConfigError(f"{algo} with tail=separate needs held-out query examples: --set query_shots=1 or more")
    if algo == "gradsum" and max(parse_terms(cfg.meta_grads)) > cfg.inner_steps:
        raise ConfigError(f"meta_grads={cfg.meta_grads} names a step beyond inner_steps={cfg.inner_steps}: "
                          "raise inner_steps or drop that term")


def preflight(cfg: Config, algo: str, eval_protocol: str) -> list:
    """The checks of a run's settings that need no file (the algorithm, the settings it
    reads, ways and shots against the data's sizes, the evaluation protocols); returns
    the (protocol, evaluation config) pairs, the shared or own one first."""
    if algo not in load_algorithms():
        raise _unknown("algorithm", algo, sorted(ALGORITHMS))
    check_algorithm_settings(cfg, algo)
    check_sizes(cfg)
    return [(p, eval_config(cfg, p)) for p in protocols(eval_protocol, algo, cfg)]


def run_identity(cfg: Config, *, algo: str, preset: str, seed: int, device: torch.device,
                 evals: list) -> dict[str, Any]:
    """What makes two runs the same run: every resolved setting, the algorithm, preset,
    seed and device, and the evaluation protocols (as config.json records them)."""
    identity = {**cfg.to_dict(), "preset": preset, "algo": algo, "seed": seed, "device": device.type,
                "eval_protocol": evals[0][0].describe(),
                "own_protocol": evals[1][0].describe() if len(evals) > 1 else None}
    return json.loads(json.dumps(identity))  # as it reads back from config.json


def _failure(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (Ctrl-C); continue it with --resume"
    if isinstance(e, SystemExit):
        return "terminated (SIGTERM); continue it with --resume"
    if isinstance(e, BenchError):
        return str(e)
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def run(cfg: Config, *, algo: str, preset: str, seed: int = 0, results: str | Path = "results",
        data: str | Path | None = None, device: str | None = None, force: bool = False,
        resume: bool = False, progress: bool = True, overrides: dict[str, Any] | None = None,
        eval_protocol: str = "shared", checkpoint_every: str = "60s") -> dict[str, Any]:
    """Meta-train, evaluate, and write `results/<preset>/<algo>/seed<seed>/`. Returns final.json.

    eval_protocol: "shared" (the preset's evaluation, the same for every algorithm),
    "own" (the algorithm's own published protocol, see `protocols`) or "both" (the
    shared one, and the own one reported beside it in final.json's `own_protocol`).
    resume: continue the run in that folder from its checkpoint (or return its
    final.json when it has finished; start it when there is none). force: start over.
    checkpoint_every: "N" meta-iterations, or "Ns"/"Nm" of meta-training time."""
    return run_seeds(cfg, algo=algo, preset=preset, seeds=[seed], results=results, data=data, device=device,
                     force=force, resume=resume, progress=progress, overrides=overrides,
                     eval_protocol=eval_protocol, checkpoint_every=checkpoint_every)[0]


def run_seeds(cfg: Config, *, algo: str, preset: str, seeds: list[int], batch_seeds: bool = False,
              results: str | Path = "results", data: str | Path | None = None, device: str | None = None,
              force: bool = False, resume: bool = False, progress: bool = True,
              overrides: dict[str, Any] | None = None, eval_protocol: str = "shared",
              checkpoint_every: str = "60s") -> list[dict[str, Any]]:
    """`run` for each of `seeds` (each its own run folder); returns their final.json, in order.

    batch_seeds: train the runs together, their parameters stacked on a leading dimension
    and every meta-iteration's computation batched over them (torch.func.vmap), instead
    of one after another. Each run keeps its own initialisation, episodes, outer
    optimizer, checkpoints, metrics and evaluation, and its results equal those of the
    run trained alone within float tolerance. Runs resumed from checkpoints at different
    meta-iterations are trained in groups, one group per meta-iteration."""
    if force and resume:
        raise BenchError("--force and --resume exclude each other: --resume continues the run, --force starts it over")
    if len(set(seeds)) != len(seeds):
        raise BenchError(f"seeds {seeds} name a seed twice: name each once")
    evals = preflight(cfg, algo, eval_protocol)
    dev = resolve_device(device)
    if cfg.cuda_graph:
        check_device(dev)
    check_layout(cfg, dev, batch_seeds and len(seeds) > 1)
    clock = CheckpointClock(checkpoint_every)

    # Every check, for every run, before the first write: a refused command leaves every
    # folder as it was.
    prepared: list[_Prepared] = []
    try:
        for seed in seeds:
            prepared.append(_prepare(cfg, algo, preset, seed, Path(results), dev, evals, force, resume))
        for prep in prepared:
            if prep.final is None:
                check_writable(prep.path)
        todo = [prep for prep in prepared if prep.final is None]
        task_data = TaskData(cfg, dev, data, progress=progress) if todo else None
    except BaseException:
        for prep in prepared:
            prep.lock.release()
        raise

    groups = ([[p for p in todo if p.start == step] for step in sorted({p.start for p in todo})] if batch_seeds
              else [[p] for p in todo])
    diverged: TrainingDiverged | None = None
    for i, group in enumerate(groups):
        try:
            _train_group(group, cfg, algo, preset, dev, task_data, evals, clock, progress, overrides)
        except TrainingDiverged as e:
            diverged = diverged or e
        except BaseException as e:
            for rest in groups[i + 1:]:  # never started: they stay as they were
                for prep in rest:
                    _fail(prep, e)
            raise
    if diverged is not None:
        raise diverged
    return [prep.final for prep in prepared]


class _Prepared:
    """One run folder, checked and (when it exists) locked, before anything is written."""

    def __init__(self, seed: int, path: Path, identity: dict[str, Any]):
        self.seed, self.path, self.identity = seed, path, identity
        self.lock = RunLock(path)
        self.ckpt: dict | None = None
        self.previous: dict | None = None
        self.final: dict | None = None  # final.json once finished
        self.resumed: list[int] = []
        self.started = False  # whether its folder has been written (by `_start`)

    @property
    def start(self) -> int:
        return self.ckpt["step"] if self.ckpt else 0


def _prepare(cfg: Config, algo: str, preset: str, seed: int, results: Path, dev: torch.device, evals: list,
             force: bool, resume: bool) -> _Prepared:
    path = run_dir(results, preset, run_method(algo, cfg, preset), seed)
    prep = _Prepared(seed, path, run_identity(cfg, algo=algo, preset=preset, seed=seed, device=dev, evals=evals))
    if has_run(path):
        prep.lock.acquire()  # refuses while another process writes this run
        prep.previous = read_state(path)
        if not (force or resume):
            prep.lock.release()
            state = f" ({prep.previous['state']})" if prep.previous else ""
            raise BenchError(f"a run already exists in {path}{state}: pass --resume to continue it, --force to "
                             "start it over, or choose another --seed/--results")
        if resume:
            try:
                prep.ckpt = resume_point(path, prep.identity, dev)
            except BaseException:
                prep.lock.release()
                raise
            if prep.previous and prep.previous["state"] == FINISHED and (path / "final.json").is_file():
                prep.lock.release()
                print(f"{path} has already finished; nothing to do", file=sys.stderr)
                prep.final = json.loads((path / "final.json").read_text())
    return prep


def _start(prep: _Prepared, cfg: Config, algo: str, preset: str, dev: torch.device,
           overrides: dict[str, Any] | None) -> None:
    """The run folder's first writes: fresh files, or the resumed run's state marker."""
    path = prep.path
    path.mkdir(parents=True, exist_ok=True)
    prep.lock.acquire()
    clear_temporaries(path)
    if prep.ckpt is None:
        clear_run(path)
        write_json(path / "config.json", {**prep.identity, "algo_settings": (
            algo_settings(preset, algo) if preset in available_presets() else {}), "overrides": overrides or {}})
        write_json(path / "env.json", environment(dev))
    prep.resumed = [*(prep.previous or {}).get("resumed_at", []), prep.ckpt["step"]] if prep.ckpt else []
    write_state(path, RUNNING, step=prep.start, resumed_at=prep.resumed)
    prep.started = True


def _fail(prep: _Prepared, e: BaseException) -> None:
    """Mark the run failed (keeping its last checkpoint's step) and release its folder; a run
    not yet started is only released (its folder stays as it was)."""
    if prep.started:
        good = (read_state(prep.path) or {}).get("step", 0)  # the last checkpoint's, which stays
        write_state(prep.path, FAILED, step=good, resumed_at=prep.resumed, message=_failure(e))
    prep.lock.release()


def stacked_step_fn(algorithm, loss, cfg: Config):
    """compute(params, inner_states, episodes) for several runs at once: lists with one
    entry per run in, a list of MetaSteps out; the runs' tensors are stacked on a leading
    dimension and the algorithm's computation is vmapped over it (executed as
    `_executed` says)."""
    from torch.func import vmap

    def one(params, inner_state, tensors):
        step = algorithm(loss, params, inner_state, Episode(*tensors), cfg)
        return step.grad, step.inner_state, step.logs
    together = _executed(vmap(one), cfg)

    def compute(params: list, inner_states: list, episodes: list) -> list:
        stack = lambda dicts: {k: torch.stack([d[k] for d in dicts]) for k in dicts[0]}  # noqa: E731
        tensors = tuple(torch.stack(ts) for ts in zip(*(e._tensors() for e in episodes)))
        grads, states, logs = together(stack(params), stack(inner_states), tensors)
        return [MetaStep(grad={k: v[i] for k, v in grads.items()}, inner_state={k: v[i] for k, v in states.items()},
                         logs={k: v[i] for k, v in logs.items()}) for i in range(len(params))]
    return compute


def final_evaluation(model, params, inner_state, task_data: TaskData, seed: int, evals: list,
                     tasks: int) -> tuple[list, float]:
    """A run's final evaluation: `tasks` test tasks under each of `evals` (the (protocol,
    evaluation config) pairs), all the same tasks (the same sampler seed); the results in
    that order, and the seconds taken."""
    t0 = time.perf_counter()
    results = []
    for _, pcfg in evals:
        if results and pcfg == evals[0][1]:  # the own protocol is the shared one: the same numbers
            results.append(results[0])
            continue
        sampler = task_data.sampler("test", "final", seed)
        results.append(evaluate(model, params, inner_state, sampler, pcfg, tasks))
    return results, time.perf_counter() - t0


class _Trainee:
    """One run's training state inside a (possibly one-run) group: its weights, outer
    optimizer, inner state, samplers, metrics, checkpoints and snapshots."""

    def __init__(self, prep: _Prepared, cfg: Config, algo: str, preset: str, dev: torch.device,
                 task_data: TaskData, evals: list):
        self.prep, self.cfg, self.algo, self.preset, self.evals = prep, cfg, algo, preset, evals
        self.path, self.seed, ckpt = prep.path, prep.seed, prep.ckpt
        torch.manual_seed(self.seed)
        self.model = build_model(cfg).to(dev)
        self.params = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        self.meta_opt = (torch.optim.SGD if cfg.meta_optimizer == "sgd" else torch.optim.Adam)(
            list(self.params.values()), lr=cfg.meta_lr)
        self.inner_state = inner_optimizer(cfg).init(self.params)
        self.train_sampler = task_data.sampler("train", "train", self.seed)
        self.periodic = {s: task_data.sampler(s, "periodic", self.seed) for s in task_data.splits}
        self.task_data = task_data
        self.train_s = 0.0  # meta-training seconds, periodic evaluation excluded
        self.periodic_s = 0.0  # seconds of periodic evaluation
        self.periodic_last_s = 0.0  # seconds of the latest one (the first holds any compilation)
        if ckpt is not None:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(ckpt["params"][k])
            self.meta_opt.load_state_dict(ckpt["meta_optimizer"])
            self.inner_state = laid_out({k: v.to(dev) for k, v in ckpt["inner_state"].items()}, cfg)
            set_rng_states(ckpt["rng"], self.train_sampler, self.periodic)
            self.train_s = ckpt["train_seconds"]
            self.periodic_s = ckpt.get("periodic_eval_seconds", 0.0)
            self.periodic_last_s = ckpt.get("periodic_eval_last_seconds", 0.0)
        self.metrics = MetricsWriter(self.path / "metrics.csv", resume_at=ckpt["metrics_bytes"] if ckpt else None)
        self.snapshots = snapshot_steps(cfg)
        # The first meta-iteration whose loss was not finite (0: none yet) and that loss; kept
        # on the device and read only when the run checks it, so the loop never waits for it.
        self.bad_step = torch.zeros((), dtype=torch.long, device=dev)
        self.bad_loss = torch.zeros((), device=dev)
        self.last_good = prep.start

    def check_finite(self, done: int) -> None:
        step_no = int(self.bad_step)
        if not step_no and all(bool(torch.isfinite(p).all()) for p in self.params.values()):
            return
        at = (f"the meta-training loss is {float(self.bad_loss)} at meta-iteration {step_no}" if step_no
              else f"the weights are not finite after meta-iteration {done}")
        raise TrainingDiverged(f"training diverged: {at}; the run in {self.path} is marked failed and keeps its last "
                               f"good checkpoint (meta-iteration {self.last_good}); lower meta_lr or inner_lr and "
                               "start it over with --force")

    def snapshot(self, done: int) -> None:
        if done in self.snapshots:
            self.check_finite(done)
            (self.path / "snapshots").mkdir(exist_ok=True)
            save_checkpoint(self.path / "snapshots" / f"step{done}.pt", {
                "params": self.params, "inner_state": self.inner_state, "step": done, "algo": self.algo,
                "preset": self.preset})

    def checkpoint(self, done: int) -> None:
        self.check_finite(done)
        self.metrics.sync()
        save_checkpoint(self.path / CHECKPOINT, {
            "params": self.params, "inner_state": self.inner_state, "meta_optimizer": self.meta_opt.state_dict(),
            "config": self.cfg.to_dict(), "algo": self.algo, "preset": self.preset, "seed": self.seed,
            "step": done, "format": FORMAT, "run": self.prep.identity,
            "rng": rng_states(self.train_sampler, self.periodic), "train_seconds": self.train_s,
            "periodic_eval_seconds": self.periodic_s, "periodic_eval_last_seconds": self.periodic_last_s,
            "metrics_bytes": self.metrics.offset})
        write_state(self.path, RUNNING, step=done, resumed_at=self.prep.resumed)
        self.last_good = done

    def set_lr(self, lr: float) -> None:
        for group in self.meta_opt.param_groups:
            group["lr"] = lr

    def apply(self, step, done: int) -> None:
        """Let the outer optimizer apply the meta-step; track a non-finite loss on the device."""
        for k, p in self.params.items():
            p.grad = step.grad[k]
        self.meta_opt.step()
        self.inner_state = step.inner_state
        new_bad = (self.bad_step == 0) & ~torch.isfinite(step.logs["loss"])
        self.bad_step = torch.where(new_bad, done, self.bad_step)
        self.bad_loss = torch.where(new_bad, step.logs["loss"].detach(), self.bad_loss)

    def log(self, step, done: int, lr: float) -> dict[str, float]:
        # Scalars are read only when logged: the one host sync, which also makes the
        # clock include the work queued on a GPU.
        logs = {k: float(v) for k, v in step.logs.items()}
        self.check_finite(done)
        for name, value in logs.items():
            self.metrics.write(done, self.train_s, "train", name, value)
        self.metrics.write(done, self.train_s, "train", "meta_lr", lr)
        return logs

    def periodic_evaluation(self, done: int) -> None:
        eval_cfg = self.evals[0][1]
        t0 = time.perf_counter()
        results = evaluate_splits(self.model, self.params, self.inner_state, self.periodic, eval_cfg,
                                  self.cfg.eval_every_tasks)
        for split, r in results.items():
            self.metrics.write(done, self.train_s, split, r.metric, r.value)
        self.periodic_last_s = time.perf_counter() - t0
        self.periodic_s += self.periodic_last_s

    def finish(self, together: int) -> dict[str, Any]:
        """The final evaluation on the test split, final.json and the finished marker."""
        cfg, eval_cfg, evals = self.cfg, self.evals[0][1], self.evals
        try:
            results, eval_s = final_evaluation(self.model, self.params, self.inner_state, self.task_data, self.seed,
                                               evals, cfg.eval_tasks)
            self.metrics.write(cfg.meta_iters, self.train_s, "test", results[0].metric, results[0].value)
        finally:
            self.metrics.close()
        final = {**scored(results, evals), "algo": self.algo, "preset": self.preset, "seed": self.seed,
                 "meta_iters": cfg.meta_iters, "train_seconds": round(self.train_s, 3),
                 "eval_seconds": round(eval_s, 3), "periodic_eval_seconds": round(self.periodic_s, 3),
                 "periodic_eval_last_seconds": round(self.periodic_last_s, 3),
                 "ms_per_meta_iter": round(1000 * self.train_s / cfg.meta_iters, 3), "seeds_together": together}
        if cfg.task == "sine":  # the Reptile example's figure, for the report
            write_csv(self.path / "sine_predictions.csv", sine_predictions(
                self.model, self.params, self.inner_state, self.task_data.sampler("test", "final", self.seed),
                eval_cfg))
        write_json(self.path / "final.json", final)
        write_state(self.path, FINISHED, step=cfg.meta_iters, resumed_at=self.prep.resumed)
        return final


def _train_group(group: list[_Prepared], cfg: Config, algo: str, preset: str, dev: torch.device,
                 task_data: TaskData, evals: list, clock: CheckpointClock, progress: bool,
                 overrides: dict[str, Any] | None) -> None:
    """Start the runs of `group` (all at the same meta-iteration), train them together, then
    evaluate each; sets each one's `final`. A run that diverges is marked failed and leaves the
    group, the others go on; the first divergence is raised at the end. Any other error
    marks every unfinished run of the group failed."""
    trainees: list[_Trainee] = []
    pending = list(group)  # the runs not yet finished or failed
    diverged: TrainingDiverged | None = None

    def drop(t: _Trainee, e: TrainingDiverged) -> None:
        nonlocal diverged
        diverged = diverged or e
        t.metrics.close()
        _fail(t.prep, e)
        trainees.remove(t)
        pending.remove(t.prep)

    def each(fn, *args) -> None:  # fn(trainee, *args) for every trainee; divergence drops one
        for t in list(trainees):
            try:
                fn(t, *args)
            except TrainingDiverged as e:
                drop(t, e)

    start = group[0].start
    algorithm = ALGORITHMS[algo]
    seeds = ",".join(str(p.seed) for p in group)
    bar = None
    try:
        for prep in group:
            _start(prep, cfg, algo, preset, dev, overrides)
        for prep in group:
            trainees.append(_Trainee(prep, cfg, algo, preset, dev, task_data, evals))
        together = len(trainees)
        loss = task_loss(trainees[0].model, cfg)  # the same network (and loss) for every seed
        compute = meta_step_fn(algorithm, loss, cfg) if together == 1 else stacked_step_fn(algorithm, loss, cfg)
        clock.reset()  # the time since the last group's checkpoint is not this group's
        if start == 0:
            each(_Trainee.snapshot, 0)
        bar = tqdm(total=cfg.meta_iters, initial=start, unit="it", disable=not progress, dynamic_ncols=True,
                   desc=f"{algo} {preset} seed{'s' if together > 1 else ''}{seeds}", mininterval=1.0)
        for it in range(start, cfg.meta_iters):
            if not trainees:
                break
            t0 = time.perf_counter()
            lr = meta_lr_at(cfg, it)
            done = it + 1
            for t in trainees:
                t.set_lr(lr)
            episodes = [train_episodes(t.train_sampler, cfg, algo) for t in trainees]
            if together == 1:
                steps = [compute(trainees[0].params, trainees[0].inner_state, episodes[0])]
            else:
                steps = compute([t.params for t in trainees], [t.inner_state for t in trainees], episodes)
            for t, step in zip(trainees, steps):
                t.apply(step, done)
            logged = done % cfg.log_every == 0 or done == cfg.meta_iters
            if logged:
                for s in steps:  # the host sync, before the clock stops
                    float(s.logs["loss"])
            seconds = time.perf_counter() - t0
            for t in trainees:
                t.train_s += seconds
            if logged:
                shown = {}

                def log(t, step):
                    shown.update(t.log(step, done, lr))
                for t, step in list(zip(trainees, steps)):
                    try:
                        log(t, step)
                    except TrainingDiverged as e:
                        drop(t, e)
                if shown:
                    bar.set_postfix(loss=f"{shown['loss']:.4f}", refresh=False)
            bar.update(1)
            each(_Trainee.snapshot, done)
            if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.meta_iters:
                each(_Trainee.periodic_evaluation, done)
            if done == cfg.meta_iters or clock.due(done):
                each(_Trainee.checkpoint, done)
                clock.reset()
        for t in list(trainees):
            t.prep.final = t.finish(together)
            t.prep.lock.release()
            trainees.remove(t)
            pending.remove(t.prep)
    except BaseException as e:
        for t in trainees:
            t.metrics.close()
        for prep in pending:
            _fail(prep, e)
        raise
    finally:
        if bar is not None:
            bar.close()
    if diverged is not None:
        raise diverged
