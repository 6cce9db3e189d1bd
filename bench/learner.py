"""A run's meta-learned initialisation, ready for new tasks: `bench.load_learner(run)`.

    import bench
    learner = bench.load_learner("results/omniglot-5w1s/reptile/seed0")
    logits = learner.predict(support_x, support_y, query_x)    # (queries, ways)

`Learner.adapt` fine-tunes the initialisation on one task's support set as the run's
evaluation does: its protocol's inner optimizer, learning rate and steps, minibatches of
`eval_batch` drawn without replacement and reshuffled when the support set runs out, and,
where `inner_state` is "carry", the inner optimizer state the run carried (Adam's moments,
as the reference restores them before each test task). `Learner.predict` then gives the
network's outputs for the queries the way the evaluation scores them: transductive, all
the queries in one batch (sharing batch-norm statistics); otherwise each query in a batch
with the support set. Those are the settings that change results (README, "Settings that
change results"): a hand-written fine-tuning loop easily gets one of them wrong. With the
minibatches the evaluation drew (`plan`), a learner scores the run's own test tasks as its
final evaluation did (tests/test_learner.py).

The speed settings of the run (compile, CUDA graphs, channels-last, matrix-product
convolutions) are left out: they change cost, not results, and one task at a time gains
nothing from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import Config
from .errors import BenchError

if TYPE_CHECKING:
    import torch
    from torch import nn

SPEED_OFF = dict(compile=False, cuda_graph=False, channels_last=False, conv_matmul=False, eval_matmul=False,
                 cudnn_benchmark=False)
"""The speed settings a learner leaves out (they change cost, not results)."""


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def saved_config(values: dict[str, Any], preset: Any) -> Config:
    """A Config from saved settings; a setting added since the run takes its preset's value."""
    from .config import available_presets, load_config, validate

    fields_ = Config.__dataclass_fields__
    known = {k: v for k, v in values.items() if k in fields_}
    missing = sorted(set(fields_) - set(known))
    if missing:
        if preset not in available_presets():
            raise BenchError(f"its settings lack {', '.join(missing)} and its preset {preset!r} is unknown")
        base = load_config(preset).to_dict()
        known.update({k: base[k] for k in missing})
    return validate(Config(**known))


def start_state(file: Path, cfg: Config, params: dict, saved: dict) -> dict:
    """The inner optimizer state fine-tuning starts from, as `bench.evaluate` chooses it:
    the carried one under inner_state = "carry", a fresh one otherwise."""
    from algorithms import inner_optimizer

    fresh = inner_optimizer(cfg).init(params)
    if cfg.inner_state != "carry":
        return fresh
    state = {}
    for key, value in fresh.items():
        if key in saved:
            state[key] = saved[key].detach().to(device=value.device, dtype=value.dtype).contiguous()
        elif key.startswith("m.") and cfg.inner_beta1 == 0:
            # With beta1 = 0 Adam's first moment is the current gradient alone
            # (m = 0 * m + 1 * g): the carried one is never read, so exports leave it out.
            state[key] = value
        else:
            raise BenchError(f"{file}: evaluation carries the inner optimizer state (inner_state = \"carry\") but "
                             f"the checkpoint lacks {key!r}: give the run's own checkpoint.pt")
        if state[key].shape != value.shape:
            raise BenchError(f"{file}: its inner optimizer state {key!r} does not fit the network")
    return state


@dataclass
class Learner:
    """A run's initialisation with its evaluation's fine-tuning (see the module's docstring)."""

    path: Path
    """The checkpoint file."""
    train_cfg: Config
    """The run's settings."""
    cfg: Config
    """The settings fine-tuning and scoring use: the run's evaluation protocol applied,
    the speed settings off."""
    run: dict[str, Any]
    """The run's identity: algo, preset, seed, settings, evaluation protocol."""
    model: nn.Module
    params: dict[str, torch.Tensor]
    """The initialisation."""
    state: dict[str, torch.Tensor]
    """The inner optimizer state each task's fine-tuning starts from."""
    step: int | None
    """The meta-iteration of the checkpoint."""
    final: dict[str, Any] | None
    """The run's final.json, when there is one."""

    @property
    def device(self) -> "torch.device":
        return next(iter(self.params.values())).device

    def plan(self, n: int, seed: int = 0) -> torch.Tensor:
        """The evaluation's minibatch plan for a support set of `n` examples: (eval_steps,
        eval_batch) indices, drawn from a generator seeded with `seed`."""
        import torch

        from .episodes import minibatch_plan

        return torch.from_numpy(minibatch_plan(np.random.default_rng(seed), n, self.cfg.eval_steps,
                                               self.cfg.eval_batch))

    def adapt(self, support_x, support_y, plan=None, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The weights fine-tuned on one task's support set, and each step's loss.

        support_x: (n, *input shape) (Omniglot (n, 1, 28, 28) with 1.0 for the background,
        Mini-ImageNet (n, 3, 84, 84) in [0, 1], sine (n, 1)); support_y: (n,) labels 0 to
        ways - 1, or (n, 1) sine values. plan: (eval_steps, eval_batch) indices into the
        support set, the minibatch of each step (default: `plan(n, seed)`)."""
        import torch

        from algorithms import adapt, inner_optimizer

        from .models import task_loss

        x, y = self._support(support_x, support_y)
        plan = self.plan(len(x), seed) if plan is None else torch.as_tensor(plan, device=self.device).long()
        if plan.dim() != 2 or plan.shape[0] != self.cfg.eval_steps or len(plan) and (
                int(plan.min()) < 0 or int(plan.max()) >= len(x)):
            raise ValueError(f"plan must be ({self.cfg.eval_steps} steps, batch) indices into the {len(x)} support "
                             f"examples, got shape {tuple(plan.shape)}")
        plan = plan.to(self.device)
        with torch.no_grad():  # torch.func.grad inside still differentiates
            adapted, _, losses = adapt(task_loss(self.model, self.cfg), inner_optimizer(self.cfg), self.params,
                                       self.state, x[plan], y[plan])
        return adapted, losses

    def outputs(self, params: dict[str, torch.Tensor], support_x, query_x) -> torch.Tensor:
        """The network's outputs with `params` for each query, as the evaluation scores them
        (`bench.evaluate.query_outputs`): (queries, ways) logits, or (queries, 1) sine values."""
        import torch

        from .evaluate import query_outputs

        support = self._inputs(support_x, "support_x")
        query = self._inputs(query_x, "query_x")
        with torch.no_grad():
            return query_outputs(self.model, self.cfg, params, support, query)

    def predict(self, support_x, support_y, query_x, plan=None, seed: int = 0) -> torch.Tensor:
        """`adapt` on the support set, then `outputs` for the queries."""
        adapted, _ = self.adapt(support_x, support_y, plan, seed)
        return self.outputs(adapted, support_x, query_x)

    def _inputs(self, x, name: str) -> torch.Tensor:
        import torch

        x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        shape = (1,) if self.cfg.task == "sine" else (3, 84, 84) if self.cfg.task == "miniimagenet" else (1, 28, 28)
        if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape or not len(x):
            raise ValueError(f"{name} must be (examples, {', '.join(map(str, shape))}) for this {self.cfg.task} "
                             f"network, got shape {tuple(x.shape)}")
        return x

    def _support(self, support_x, support_y) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        x = self._inputs(support_x, "support_x")
        if self.cfg.task == "sine":
            y = torch.as_tensor(support_y, dtype=torch.float32, device=self.device).reshape(len(x), 1)
            return x, y
        y = torch.as_tensor(support_y, device=self.device)
        if y.shape != (len(x),) or y.is_floating_point() or len(y) and (int(y.min()) < 0
                                                                        or int(y.max()) >= self.cfg.ways):
            raise ValueError(f"support_y must be ({len(x)},) integer labels 0 to {self.cfg.ways - 1}, "
                             f"got {tuple(y.shape)} {y.dtype}")
        return x, y.long()


def load_learner(path: str | Path, device: str | torch.device = "cpu") -> Learner:
    """The initialisation in a run folder (its checkpoint.pt) or a checkpoint file, with its
    run's evaluation settings, on `device`. Raises BenchError (one line) for a missing,
    unreadable or foreign file."""
    import torch

    from .models import build_model
    from .protocols import Protocol, eval_config

    path = Path(path)
    file = path / "checkpoint.pt" if path.is_dir() else path
    if not file.is_file():
        where = f"{path} holds no checkpoint.pt" if path.is_dir() else f"{path} does not exist"
        raise BenchError(f"{where}: give a run folder written by `python -m bench run`, or its checkpoint.pt")
    folder = file.parent
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated, foreign or unsafe file: all the same to the user
        raise BenchError(f"{file} is not a readable checkpoint ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:160]}): give a run folder written by `python -m bench run`"
                         ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("params"), dict):
        raise BenchError(f"{file} holds no network weights ('params'): give a run's checkpoint.pt")
    saved = read_json(folder / "config.json") or {}
    run = ckpt.get("run") if isinstance(ckpt.get("run"), dict) else saved
    values = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else saved
    preset = ckpt.get("preset", run.get("preset"))
    if not values.get("task"):
        raise BenchError(f"{file} is a checkpoint without its settings (none in it, no config.json beside it): "
                         "give a run folder written by `python -m bench run`")
    try:
        train_cfg = saved_config(values, preset)
        protocol = run.get("eval_protocol") or {}
        settings = protocol.get("settings") or {}
        cfg = eval_config(train_cfg, Protocol(protocol.get("name", "shared"), protocol.get("source", ""), settings))
    except BenchError as e:
        raise BenchError(f"{file}: {e}") from None
    cfg = cfg.replace(**SPEED_OFF)
    with torch.random.fork_rng():  # its random initial weights are replaced: leave the global generator be
        model = build_model(train_cfg)
    expected = {k: tuple(v.shape) for k, v in model.named_parameters()}
    params = ckpt["params"]
    got = {k: tuple(v.shape) for k, v in params.items() if isinstance(v, torch.Tensor)}
    if got != expected:
        raise BenchError(f"{file}: its weights do not fit the suite's {train_cfg.task} network for this preset "
                         "(other parameter names or shapes): give a checkpoint written by this suite")
    dev = torch.device(device)
    model = model.to(dev)
    params = {k: params[k].detach().float().contiguous().to(dev) for k in expected}
    state = start_state(file, cfg, params, ckpt.get("inner_state") or {})
    run = {**run, "algo": run.get("algo", ckpt.get("algo")), "preset": preset,
           "seed": run.get("seed", ckpt.get("seed"))}
    step = ckpt.get("step") if isinstance(ckpt.get("step"), int) else None
    return Learner(file, train_cfg, cfg, run, model, params, state, step, read_json(folder / "final.json"))
