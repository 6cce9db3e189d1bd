"""`run(config)`: meta-train one algorithm with one seed, evaluate, write the run folder.

Read top to bottom: check the settings, the device, the run folder and the data
(any bad input fails here, before a file is written), create the run folder or
load its checkpoint, then the meta-training loop: sample a meta-batch, ask the
algorithm for the meta-gradient, let the outer optimizer apply it with the
linearly annealed step size, log, evaluate now and then, checkpoint now and then;
finally evaluate on the test split and save. The run folder's state marker says
running, finished or failed throughout; a non-finite loss stops the run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from algorithms import ALGORITHMS, QUERY_ALGORITHMS, inner_optimizer, parse_terms

from .checkpoint import FORMAT, CheckpointClock, resume_point, rng_states, set_rng_states
from .config import Config, _unknown, algo_settings, available_presets
from .episodes import Episode
from .errors import BenchError, ConfigError, TrainingDiverged
from .evaluate import evaluate, sine_predictions
from .models import build_model, task_loss
from .protocols import eval_config, protocols
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
    if algo not in QUERY_ALGORITHMS:
        return sampler.sample(cfg.meta_batch, cfg.train_shots, 0, cfg.inner_steps, cfg.inner_batch)
    if cfg.tail == "separate":
        return sampler.sample(cfg.meta_batch, cfg.train_shots, cfg.query_shots, cfg.inner_steps - 1,
                              cfg.inner_batch)
    return sampler.sample(cfg.meta_batch, cfg.train_shots, 0, cfg.inner_steps, cfg.inner_batch).shared_tail()


def meta_iteration(algorithm, algo: str, loss, params, inner_state, sampler, meta_opt, cfg: Config):
    """One meta-iteration: draw a meta-batch, compute the meta-gradient, let the outer
    optimizer apply it to `params` (in place). Returns the algorithm's MetaStep."""
    episodes = train_episodes(sampler, cfg, algo)
    with torch.no_grad():  # torch.func transforms inside still differentiate
        step = algorithm(loss, params, inner_state, episodes, cfg)
    for k, p in params.items():
        p.grad = step.grad[k]
    meta_opt.step()
    return step


def check_algorithm_settings(cfg: Config, algo: str) -> None:
    """The settings only some algorithms read, checked for those algorithms."""
    if algo in QUERY_ALGORITHMS and cfg.inner_steps < 2:
        raise ConfigError(f"{algo} needs inner_steps >= 2 (the last inner minibatch is the query): "
                          "--set inner_steps=2 or more; one step is joint training (--algo joint)")
    if algo in QUERY_ALGORITHMS and cfg.tail == "separate" and cfg.query_shots == 0:
        raise ConfigError(f"{algo} with tail=separate needs held-out query examples: --set query_shots=1 or more")
    if algo == "gradsum" and max(parse_terms(cfg.meta_grads)) > cfg.inner_steps:
        raise ConfigError(f"meta_grads={cfg.meta_grads} names a step beyond inner_steps={cfg.inner_steps}: "
                          "raise inner_steps or drop that term")


def preflight(cfg: Config, algo: str, eval_protocol: str) -> list:
    """The checks of a run's settings that need no file (the algorithm, the settings it
    reads, ways and shots against the data's sizes, the evaluation protocols); returns
    the (protocol, evaluation config) pairs, the shared or own one first."""
    if algo not in ALGORITHMS:
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
    if force and resume:
        raise BenchError("--force and --resume exclude each other: --resume continues the run, --force starts it over")
    evals = preflight(cfg, algo, eval_protocol)
    algorithm = ALGORITHMS[algo]
    dev = resolve_device(device)
    clock = CheckpointClock(checkpoint_every)
    path = run_dir(Path(results), preset, run_method(algo, cfg, preset), seed)
    identity = run_identity(cfg, algo=algo, preset=preset, seed=seed, device=dev, evals=evals)

    # Every check before the first write: a refused command leaves the folder as it was.
    lock, ckpt, previous = RunLock(path), None, None
    if has_run(path):
        lock.acquire()  # refuses while another process writes this run
        previous = read_state(path)
        if not (force or resume):
            state = f" ({previous['state']})" if previous else ""
            raise BenchError(f"a run already exists in {path}{state}: pass --resume to continue it, --force to "
                             "start it over, or choose another --seed/--results")
        if resume:
            ckpt = resume_point(path, identity, dev)
            if previous and previous["state"] == FINISHED and (path / "final.json").is_file():
                lock.release()
                print(f"{path} has already finished; nothing to do", file=sys.stderr)
                return json.loads((path / "final.json").read_text())
    check_writable(path)
    task_data = TaskData(cfg, dev, data, progress=progress)

    path.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    clear_temporaries(path)
    if ckpt is None:
        clear_run(path)
        write_json(path / "config.json", {**identity, "algo_settings": (algo_settings(preset, algo)
                                                                         if preset in available_presets() else {}),
                                          "overrides": overrides or {}})
        write_json(path / "env.json", environment(dev))
    resumed = [*(previous or {}).get("resumed_at", []), ckpt["step"]] if ckpt else []
    write_state(path, RUNNING, step=ckpt["step"] if ckpt else 0, resumed_at=resumed)
    try:
        return _train_and_evaluate(cfg, algo, preset, seed, algorithm, path, dev, task_data, evals, ckpt,
                                   clock, identity, resumed, progress)
    except BaseException as e:
        good = (read_state(path) or {}).get("step", 0)  # the last checkpoint's, which stays
        write_state(path, FAILED, step=good, resumed_at=resumed, message=_failure(e))
        raise
    finally:
        lock.release()


def _train_and_evaluate(cfg: Config, algo: str, preset: str, seed: int, algorithm, path: Path,
                        dev: torch.device, task_data: TaskData, evals: list, ckpt: dict | None,
                        clock: CheckpointClock, identity: dict[str, Any], resumed: list[int],
                        progress: bool) -> dict[str, Any]:
    """The run itself, from the start or from `ckpt`; writes metrics, checkpoints, final.json."""
    primary, eval_cfg = evals[0]
    torch.manual_seed(seed)
    model = build_model(cfg).to(dev)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    loss = task_loss(model, cfg)
    meta_opt = (torch.optim.SGD if cfg.meta_optimizer == "sgd" else torch.optim.Adam)(
        list(params.values()), lr=cfg.meta_lr)
    inner_state = inner_optimizer(cfg).init(params)
    train_sampler = task_data.sampler("train", "train", seed)
    periodic = {s: task_data.sampler(s, "periodic", seed) for s in task_data.splits}
    train_s = 0.0  # meta-training seconds, periodic evaluation excluded
    start = 0
    if ckpt is not None:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(ckpt["params"][k])
        meta_opt.load_state_dict(ckpt["meta_optimizer"])
        inner_state = {k: v.to(dev) for k, v in ckpt["inner_state"].items()}
        set_rng_states(ckpt["rng"], train_sampler, periodic)
        train_s, start = ckpt["train_seconds"], ckpt["step"]
    metrics = MetricsWriter(path / "metrics.csv", resume_at=ckpt["metrics_bytes"] if ckpt else None)
    snapshots = snapshot_steps(cfg)
    # The first meta-iteration whose loss was not finite (0: none yet) and that loss; kept
    # on the device and read only when the run checks it, so the loop never waits for it.
    bad_step = torch.zeros((), dtype=torch.long, device=dev)
    bad_loss = torch.zeros((), device=dev)
    last_good = start

    def check_finite(done: int) -> None:
        step_no = int(bad_step)
        if not step_no and all(bool(torch.isfinite(p).all()) for p in params.values()):
            return
        at = (f"the meta-training loss is {float(bad_loss)} at meta-iteration {step_no}" if step_no
              else f"the weights are not finite after meta-iteration {done}")
        raise TrainingDiverged(f"training diverged: {at}; the run in {path} is marked failed and keeps its last good "
                               f"checkpoint (meta-iteration {last_good}); lower meta_lr or inner_lr and start it "
                               "over with --force")

    def snapshot(done: int) -> None:
        if done in snapshots:
            check_finite(done)
            (path / "snapshots").mkdir(exist_ok=True)
            save_checkpoint(path / "snapshots" / f"step{done}.pt", {
                "params": params, "inner_state": inner_state, "step": done, "algo": algo, "preset": preset})

    def checkpoint(done: int) -> None:
        nonlocal last_good
        check_finite(done)
        metrics.sync()
        save_checkpoint(path / CHECKPOINT, {
            "params": params, "inner_state": inner_state, "meta_optimizer": meta_opt.state_dict(),
            "config": cfg.to_dict(), "algo": algo, "preset": preset, "seed": seed, "step": done,
            "format": FORMAT, "run": identity, "rng": rng_states(train_sampler, periodic),
            "train_seconds": train_s, "metrics_bytes": metrics.offset})
        write_state(path, RUNNING, step=done, resumed_at=resumed)
        last_good = done
        clock.reset()

    if start == 0:
        snapshot(0)
    bar = tqdm(total=cfg.meta_iters, initial=start, unit="it", disable=not progress, dynamic_ncols=True,
               desc=f"{algo} {preset} seed{seed}", mininterval=1.0)
    try:
        for it in range(start, cfg.meta_iters):
            t0 = time.perf_counter()
            lr = meta_lr_at(cfg, it)
            for group in meta_opt.param_groups:
                group["lr"] = lr
            step = meta_iteration(algorithm, algo, loss, params, inner_state, train_sampler, meta_opt, cfg)
            inner_state = step.inner_state
            done = it + 1
            new_bad = (bad_step == 0) & ~torch.isfinite(step.logs["loss"])
            bad_step = torch.where(new_bad, done, bad_step)
            bad_loss = torch.where(new_bad, step.logs["loss"].detach(), bad_loss)
            logged = done % cfg.log_every == 0 or done == cfg.meta_iters
            # Scalars are read only when logged: the one host sync, which also makes the
            # clock include the work queued on a GPU.
            logs = {k: float(v) for k, v in step.logs.items()} if logged else {}
            train_s += time.perf_counter() - t0
            if logged:
                check_finite(done)
                for name, value in logs.items():
                    metrics.write(done, train_s, "train", name, value)
                metrics.write(done, train_s, "train", "meta_lr", lr)
                bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)
            bar.update(1)
            snapshot(done)
            if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.meta_iters:
                for split, sampler in periodic.items():
                    r = evaluate(model, params, inner_state, sampler, eval_cfg, cfg.eval_every_tasks)
                    metrics.write(done, train_s, split, r.metric, r.value)
            if done == cfg.meta_iters or clock.due(done):
                checkpoint(done)

        t0 = time.perf_counter()
        results_by_protocol = []
        for _, pcfg in evals:  # every protocol scores the same test tasks (the same sampler seed)
            if results_by_protocol and pcfg == eval_cfg:  # the own protocol is the shared one: same numbers
                results_by_protocol.append(results_by_protocol[0])
                continue
            final_sampler = task_data.sampler("test", "final", seed)
            results_by_protocol.append(evaluate(model, params, inner_state, final_sampler, pcfg, cfg.eval_tasks))
        eval_s = time.perf_counter() - t0
        result = results_by_protocol[0]
        metrics.write(cfg.meta_iters, train_s, "test", result.metric, result.value)
    finally:
        bar.close()
        metrics.close()

    final = {**result.summary(), "split": "test", "transductive": eval_cfg.transductive,
             "eval_protocol": primary.name,
             "own_protocol": ({**results_by_protocol[1].summary(), "name": evals[1][0].name,
                               "transductive": evals[1][1].transductive} if len(evals) > 1 else None),
             "algo": algo, "preset": preset, "seed": seed, "meta_iters": cfg.meta_iters,
             "train_seconds": round(train_s, 3), "eval_seconds": round(eval_s, 3),
             "ms_per_meta_iter": round(1000 * train_s / cfg.meta_iters, 3)}
    if cfg.task == "sine":  # the Reptile example's figure, for the report
        write_csv(path / "sine_predictions.csv", sine_predictions(
            model, params, inner_state, task_data.sampler("test", "final", seed), eval_cfg))
    write_json(path / "final.json", final)
    write_state(path, FINISHED, step=cfg.meta_iters, resumed_at=resumed)
    return final
