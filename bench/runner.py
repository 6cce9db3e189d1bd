"""`run(config)`: meta-train one algorithm with one seed, evaluate, write the run folder.

Read top to bottom: resolve the device and the data (any bad input fails here,
before a file is written), create the run folder, then the meta-training loop:
sample a meta-batch, ask the algorithm for the meta-gradient, let the outer
optimizer apply it with the linearly annealed step size, log, evaluate now and
then; finally evaluate on the test split and save.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from algorithms import ALGORITHMS, QUERY_ALGORITHMS, inner_optimizer, parse_terms

from .config import Config, _unknown, algo_settings, available_presets
from .episodes import Episode
from .errors import BenchError, ConfigError
from .evaluate import evaluate, sine_predictions
from .models import build_model, task_loss
from .protocols import eval_config, protocols
from .results import (MetricsWriter, environment, method_name, prepare_run_dir, run_dir, save_checkpoint,
                      write_csv, write_json)
from .tasks import TaskData


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


def run(cfg: Config, *, algo: str, preset: str, seed: int = 0, results: str | Path = "results",
        data: str | Path | None = None, device: str | None = None, force: bool = False,
        progress: bool = True, overrides: dict[str, Any] | None = None,
        eval_protocol: str = "shared") -> dict[str, Any]:
    """Meta-train, evaluate, and write `results/<preset>/<algo>/seed<seed>/`. Returns final.json.

    eval_protocol: "shared" (the preset's evaluation, the same for every algorithm),
    "own" (the algorithm's own published protocol, see `protocols`) or "both" (the
    shared one, and the own one reported beside it in final.json's `own_protocol`)."""
    if algo not in ALGORITHMS:
        raise _unknown("algorithm", algo, sorted(ALGORITHMS))
    algorithm = ALGORITHMS[algo]
    check_algorithm_settings(cfg, algo)
    evals = [(p, eval_config(cfg, p)) for p in protocols(eval_protocol, algo, cfg)]
    primary, eval_cfg = evals[0]
    dev = resolve_device(device)
    task_data = TaskData(cfg, dev, data, progress=progress)
    path = run_dir(Path(results), preset, method_name(algo, cfg.meta_grads, cfg.meta_grads_mean), seed)
    prepare_run_dir(path, force=force)

    write_json(path / "config.json", {**cfg.to_dict(), "preset": preset, "algo": algo, "seed": seed,
                                      "algo_settings": (algo_settings(preset, algo)
                                                        if preset in available_presets() else {}),
                                      "overrides": overrides or {}, "device": dev.type,
                                      "eval_protocol": primary.describe(),
                                      "own_protocol": evals[1][0].describe() if len(evals) > 1 else None})
    write_json(path / "env.json", environment(dev))

    torch.manual_seed(seed)
    model = build_model(cfg).to(dev)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    loss = task_loss(model, cfg)
    meta_opt = (torch.optim.SGD if cfg.meta_optimizer == "sgd" else torch.optim.Adam)(
        list(params.values()), lr=cfg.meta_lr)
    inner_state = inner_optimizer(cfg).init(params)

    train_sampler = task_data.sampler("train", "train", seed)
    periodic = {s: task_data.sampler(s, "periodic", seed) for s in task_data.splits}
    metrics = MetricsWriter(path / "metrics.csv")
    train_s = 0.0  # meta-training seconds, periodic evaluation excluded
    snapshots = snapshot_steps(cfg)

    def snapshot(done: int) -> None:
        if done in snapshots:
            (path / "snapshots").mkdir(exist_ok=True)
            save_checkpoint(path / "snapshots" / f"step{done}.pt", {
                "params": params, "inner_state": inner_state, "step": done, "algo": algo, "preset": preset})

    snapshot(0)
    bar = tqdm(total=cfg.meta_iters, unit="it", disable=not progress, dynamic_ncols=True,
               desc=f"{algo} {preset} seed{seed}", mininterval=1.0)
    try:
        for it in range(cfg.meta_iters):
            t0 = time.perf_counter()
            lr = meta_lr_at(cfg, it)
            for group in meta_opt.param_groups:
                group["lr"] = lr
            step = meta_iteration(algorithm, algo, loss, params, inner_state, train_sampler, meta_opt, cfg)
            inner_state = step.inner_state
            done = it + 1
            logged = done % cfg.log_every == 0 or done == cfg.meta_iters
            # Scalars are read only when logged: the one host sync, which also makes the
            # clock include the work queued on a GPU.
            logs = {k: float(v) for k, v in step.logs.items()} if logged else {}
            train_s += time.perf_counter() - t0
            if logged:
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
    save_checkpoint(path / "checkpoint.pt", {
        "params": params, "inner_state": inner_state, "meta_optimizer": meta_opt.state_dict(),
        "config": cfg.to_dict(), "algo": algo, "preset": preset, "seed": seed, "step": cfg.meta_iters})
    write_json(path / "final.json", final)  # last: its presence marks a finished run
    return final
