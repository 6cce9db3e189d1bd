"""The shared functional inner loop: SGD and Adam over parameter dicts.

Everything here is a pure function of tensors, so it runs unchanged one task at a
time (the serial path), under `torch.func.vmap` over the tasks of a meta-batch (the
batched path), and under autograd when an algorithm differentiates through it.

The optimizer state is a dict of tensors: Adam's first and second moments per
parameter and its step count `t`; SGD has none. The step count is a tensor so that
a state carried across tasks, meta-iterations and evaluation (the reference code's
behaviour, PAPERS.md section 4) stays inside the computation.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap
from torch.utils._pytree import tree_flatten

from . import onednn

Params = dict[str, Tensor]
State = dict[str, Tensor]
TaskLoss = Callable[[Params, Tensor, Tensor], Tensor]
"""loss(params, x, y) -> scalar, for one task's minibatch."""


@dataclass(frozen=True)
class InnerOptimizer:
    """Settings of the per-task optimizer (`inner_*` in the run config)."""

    kind: str  # "sgd" or "adam"
    lr: float
    beta1: float = 0.0
    beta2: float = 0.999
    eps: float = 1e-8

    def init(self, params: Params) -> State:
        """A fresh state for `params` (empty for SGD)."""
        if self.kind == "sgd":
            return {}
        first = next(iter(params.values()))
        state = {"t": torch.zeros((), dtype=first.dtype, device=first.device)}
        for k, p in params.items():  # the keys in the order `step` returns them
            state[f"m.{k}"], state[f"v.{k}"] = torch.zeros_like(p), torch.zeros_like(p)
        return state

    def step(self, params: Params, grads: Params, state: State) -> tuple[Params, State]:
        """One update; returns new dicts and leaves the inputs untouched."""
        if _plain():
            return self._step_foreach(params, grads, state)
        if self.kind == "sgd":
            return {k: p - self.lr * grads[k] for k, p in params.items()}, state
        # Adam (Kingma & Ba, Algorithm 1) with bias correction from the (carried) step count.
        t = state["t"] + 1
        corr1 = 1 - self.beta1 ** t
        corr2 = 1 - self.beta2 ** t
        new_params, new_state = {}, {"t": t}
        for k, p in params.items():
            g = grads[k]
            m = self.beta1 * state[f"m.{k}"] + (1 - self.beta1) * g
            v = self.beta2 * state[f"v.{k}"] + (1 - self.beta2) * g * g
            new_params[k] = p - self.lr * (m / corr1) / (_sqrt0(v / corr2) + self.eps)
            new_state[f"m.{k}"], new_state[f"v.{k}"] = m, v
        return new_params, new_state


    def _step_foreach(self, params: Params, grads: Params, state: State) -> tuple[Params, State]:
        """`step` as torch._foreach operations over all the parameters at once: the same
        operations in the same order on every element (so the same numbers), in a few
        calls instead of a dozen per parameter. Outside torch.func transforms only (the
        square root's derivative, which `_sqrt0` guards, is then never taken)."""
        names = list(params)
        p, g = [params[k] for k in names], [grads[k] for k in names]
        if self.kind == "sgd":
            return dict(zip(names, torch._foreach_sub(p, torch._foreach_mul(g, self.lr)))), state
        t = state["t"] + 1
        corr1 = 1 - self.beta1 ** t
        corr2 = 1 - self.beta2 ** t
        m = torch._foreach_add(torch._foreach_mul([state[f"m.{k}"] for k in names], self.beta1),
                               torch._foreach_mul(g, 1 - self.beta1))
        v = torch._foreach_add(torch._foreach_mul([state[f"v.{k}"] for k in names], self.beta2),
                               torch._foreach_mul(torch._foreach_mul(g, 1 - self.beta2), g))
        step = torch._foreach_mul(torch._foreach_div(m, [corr1] * len(names)), self.lr)
        denom = torch._foreach_add(torch._foreach_sqrt(torch._foreach_div(v, [corr2] * len(names))), self.eps)
        new_params = dict(zip(names, torch._foreach_sub(p, torch._foreach_div(step, denom))))
        new_state = {"t": t}  # the keys in `step`'s order, which transforms over the state rely on
        for k, mk, vk in zip(names, m, v):
            new_state[f"m.{k}"], new_state[f"v.{k}"] = mk, vk
        return new_params, new_state


def _sqrt0(v: Tensor) -> Tensor:
    """sqrt(v) for v >= 0 whose derivative is 0 instead of infinite where v == 0.

    The forward value is exactly v.sqrt(). Differentiating through Adam (second-order
    MAML) meets v == 0 wherever a gradient entry is exactly zero (a dead ReLU channel,
    say), and the plain square root's infinite slope there turns the meta-gradient
    into NaN; the double `where` keeps both branches finite.
    """
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))


def adapt(loss: TaskLoss, opt: InnerOptimizer, params: Params, state: State,
          xs: Tensor, ys: Tensor) -> tuple[Params, State, Tensor]:
    """Train one task: one optimizer step per minibatch `xs[s], ys[s]` (steps first).

    Returns the adapted parameters W, the final optimizer state and each step's loss.
    Differentiable with respect to `params` (torch.func.grad of a function that calls
    it gives second-order MAML).
    """
    params, state, losses, _ = _steps(loss, opt, params, state, xs, ys, keep_grads=False)
    return params, state, losses


def adapt_with_grads(loss: TaskLoss, opt: InnerOptimizer, params: Params, state: State,
                     xs: Tensor, ys: Tensor) -> tuple[Params, State, Tensor, Params]:
    """`adapt`, also returning each step's gradient g_s (stacked, steps first)."""
    params, state, losses, grads = _steps(loss, opt, params, state, xs, ys, keep_grads=True)
    return params, state, losses, {k: torch.stack([g[k] for g in grads]) for k in params}


def _autograd_grad_and_value(loss: TaskLoss):
    """grad_and_value(loss) through torch.autograd directly: the same kernels and numbers,
    without the function transform's per-call wrapping (about half the time of a step of
    the sine MLP). Only valid outside every torch.func transform."""
    def step_grad(params: Params, x: Tensor, y: Tensor) -> tuple[Params, Tensor]:
        with torch.enable_grad():
            leaves = {k: p.detach().requires_grad_() for k, p in params.items()}
            value = loss(leaves, x, y)
            grads = torch.autograd.grad(value, list(leaves.values()))
        return dict(zip(leaves, grads)), value.detach()
    return step_grad


def _plain() -> bool:
    """True outside every torch.func transform (vmap, grad, vjp) and outside compilation:
    where nothing differentiates through the inner loop and plain autograd may run it."""
    return torch._C._functorch.peek_interpreter_stack() is None and not torch.compiler.is_compiling()


def _steps(loss, opt, params, state, xs, ys, *, keep_grads: bool):
    step = _compiled_step(loss, opt, keep_grads) if _COMPILED == "step" and _plain() else partial(_step, loss, opt)
    losses, grads_seen = [], []
    for s in range(xs.shape[0]):
        params, state, value, grads = step(params, state, xs[s], ys[s])
        losses.append(value)
        if keep_grads:
            grads_seen.append(grads)
    return params, state, torch.stack(losses), grads_seen


def inner_step(loss: TaskLoss, opt: InnerOptimizer, params: Params, state: State, x: Tensor, y: Tensor
               ) -> tuple[Params, State]:
    """One optimizer step of one task on the minibatch (x, y): the new params and state."""
    params, state, _, _ = _step(loss, opt, params, state, x, y)
    return params, state


def _step(loss, opt, params, state, x, y):
    """One inner step on the minibatch (x, y): (new params, new state, loss, gradients)."""
    step_grad = _autograd_grad_and_value(loss) if _plain() else grad_and_value(loss)
    grads, value = step_grad(params, x, y)
    params, state = opt.step(params, grads, state)
    return params, state, value, grads


_COMPILED = None  # what compiled_units compiles: "step", "task" or None


@contextmanager
def compiled_units(unit: str | None):
    """Inside it, the plain computations (outside torch.func transforms: the serial paths,
    `bench.runner.compile_unit` says which) run compiled by torch.compile, one unit at a
    time, each compiled once (seconds) and called again and again, where compiling a whole
    meta-iteration unrolls all its tasks and steps (minutes):

    - "step": each inner step of a task loss and optimizer (`_compiled_step`), called for
      every minibatch;
    - "task": each task's computation of a meta-batch (`map_tasks`'s `fn`:
      `_compiled_task`), called for every task: for FOMAML and MAML, whose query
      gradient (second-order for MAML) then runs compiled too.

    The same operations as under a transform, equal to the plain ones within float
    tolerance. None compiles nothing."""
    global _COMPILED
    before, _COMPILED = _COMPILED, _COMPILED or unit
    try:
        yield
    finally:
        _COMPILED = before


def _compiled_step(loss, opt, keep_grads: bool):
    """The compiled step of this loss and optimizer, kept on the loss function (so it lives
    as long as the run's loss) for every later call."""
    by_opt = vars(loss).setdefault("_compiled_steps", {})
    if (opt, keep_grads) not in by_opt:
        def step(params, state, x, y):
            params, state, value, grads = _step(loss, opt, params, state, x, y)
            return params, state, value, grads if keep_grads else {}
        by_opt[opt, keep_grads] = compile_fn(step, one_task=True)
    return by_opt[opt, keep_grads]


def _compiled_task(fn: partial):
    """The compiled `fn`, a task's computation: `partial(task, ..., loss, opt)` as
    `adapt_tasks` and `algorithms.base.query_meta_step` make it, a new partial every
    meta-iteration of the same function and arguments; kept on the loss function (as
    `_compiled_step` is) under that function and its arguments."""
    loss = fn.args[-2]
    key = (fn.func, fn.args, tuple(sorted(fn.keywords.items())))
    by_task = vars(loss).setdefault("_compiled_tasks", {})
    if key not in by_task:
        by_task[key] = compile_fn(fn, one_task=True)
    return by_task[key]


_ISOLATES = ("isolate_recompiles" in inspect.signature(torch.compile).parameters
             and hasattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe")
             and hasattr(torch.compiler, "skip_guard_on_globals_unsafe"))


def _unchanging(guards) -> list[bool]:
    """The guards to keep: all but those on nn.Modules and on module-level names."""
    modules = torch.compiler.skip_guard_on_all_nn_modules_unsafe(guards)
    names = torch.compiler.skip_guard_on_globals_unsafe(guards)
    return [a and b for a, b in zip(modules, names)]


def compile_fn(fn, *, one_task: bool = False):
    """torch.compile(fn) for fixed shapes, made at the first call for the device of its
    first tensor argument: on the CPU with Inductor's C++ wrapper (the compiled kernels
    called from generated C++ rather than generated Python; the Omniglot CNN's step ran 5
    to 8% faster with it on a 2-core CPU, in two measurements) and, where this torch can,
    compiled ahead of its calls and checked by a comparison of its own (`Precompiled`);
    elsewhere (CUDA, an older torch) checked by Dynamo's guards (`_dynamo_compiled`).
    On the CPU its large float32 matrix products run on oneDNN (`cpu_options`).
    `one_task` says that fn computes one task, outside every vmap: its traces then
    compute the convolutions as such products (`algorithms.onednn.one_task`).

    Each call of compile_fn keeps its compiled code apart: the suite makes one per run
    (`_compiled_step`, `_compiled_task`, `bench.runner._executed`,
    `bench.evaluate._compiled`), so every run in a process (a speed table's rows, a test
    session's runs) compiles its own and never meets another's.
    Within a run neither the network's modules (their parameters are arguments, through
    functional_call) nor the module-level names the code calls (torch's functions, the
    suite's) change, so the compiled code is not checked against them."""
    compiled = None

    def call(*args):
        nonlocal compiled
        if compiled is None:
            first = next((x for x in tree_flatten(args)[0] if isinstance(x, Tensor)), None)
            cpu = first is not None and first.device.type == "cpu"
            compiled = Precompiled(fn) if cpu and _PRECOMPILES else _dynamo_compiled(fn, cpu)
            if one_task:
                compiled = onednn.one_task(compiled)
        return compiled(*args)
    return call


def cpu_options() -> dict:
    """Inductor's settings for the suite's compiled CPU code: the C++ wrapper, and the
    large matrix products given to oneDNN (`algorithms.onednn`)."""
    return {"cpp_wrapper": True, **onednn.inductor_options()}


def _dynamo_compiled(fn, cpu: bool):
    """torch.compile(fn), its calls checked by Dynamo's guards, with its compiled code
    apart from every other function's (`isolate_recompiles`), and without the guards on
    the network's modules and on module-level names (`_unchanging`). Checking those
    before every call cost the Omniglot CNN's compiled step a good part of its time on a
    2-core CPU: per meta-iteration, 64.2 ms with every guard against 58.8 without the
    modules' (one process), and 57.1 with the modules' gone against 54.2 without the
    names' too (another). Guards on the arguments' shapes, dtypes, strides and devices, on
    what else the function closes over (the optimizer's settings, the run's config) and
    on global state (grad mode, autocast) stay.

    A torch without `isolate_recompiles` or those guard filters (an older release) shares
    one cache among the runs of a process: there every guard stays, since the module
    guards are what tells two runs' networks apart, and the limit on entries, past which
    torch silently runs the function uncompiled, is raised from its default of 8, since
    every run adds one."""
    options, isolation = {}, {}
    if _ISOLATES:
        options["guard_filter_fn"] = _unchanging
        isolation["isolate_recompiles"] = True
    else:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    if cpu:
        options.update(cpu_options())
    return torch.compile(fn, dynamic=False, options=options or None, **isolation)


_GUARDS = getattr(getattr(torch._C, "_dynamo", None), "guards", None)
try:
    from torch._dynamo.aot_compile_types import SerializableCallable
except ImportError:  # a torch without aot_compile
    SerializableCallable = None
_PRECOMPILES = (_ISOLATES and hasattr(_GUARDS, "TensorGuards") and hasattr(_GUARDS, "GlobalStateGuard")
                and SerializableCallable is not None)

# torch's compile-cache settings as they stand outside aot_compile, which switches the caches off
# for what it compiles (`_cached_inductor` switches them back)
_CACHE_SETTINGS = {name: getattr(torch._functorch.config, name, None)
                   for name in ("bypass_autograd_cache_key", "bundled_autograd_cache", "force_autograd_cache",
                                "force_non_lazy_backward_lowering", "strict_autograd_cache")}


def _cached_inductor(graph, example_inputs):
    """Inductor with the C++ wrapper, as torch.compile's default backend, under torch's
    own compile-cache settings: `aot_compile` switches its caches off (to make code it can
    save to a file, which the suite never does), so without this every process compiled
    anew."""
    from torch._inductor.compile_fx import compile_fx

    settings = {k: v for k, v in _CACHE_SETTINGS.items() if v is not None}
    graph._backend_id = None  # aot_compile's name for the graph, unique, which AOTAutograd's cache key would take in
    with torch._functorch.config.patch(settings):
        return _Unsaved(compile_fx(graph, example_inputs, config_patches=cpu_options()))


if _PRECOMPILES:
    class _Unsaved(SerializableCallable):
        """Inductor's compiled code as `aot_compile` takes it from a backend: callable, and
        never saved."""

        def __init__(self, fn):
            self.fn = fn

        def __call__(self, *args, **kwargs):
            return self.fn(*args, **kwargs)

        @classmethod
        def serialize_compile_artifacts(cls, fn):
            raise NotImplementedError("the suite's compiled code is not saved")

        @classmethod
        def deserialize_compile_artifacts(cls, data):
            raise NotImplementedError("the suite's compiled code is not saved")


class Precompiled:
    """fn compiled for the CPU ahead of its calls (torch.compile's `aot_compile`, whole
    graph, C++ wrapper), one version per kind of call, and each call checked by two
    comparisons in C++ (torch's own checks of tensors and of global state, TensorGuards
    and GlobalStateGuard) instead of by Dynamo's guards and frame evaluation. A version
    serves the calls whose tensors have the same shapes, strides, dtypes, devices and
    requires_grad as the call it was compiled for, the same tensor passed in the same
    places, in containers (dicts, lists, tuples) of the same types and keys, with the
    same other values, under the same global state (grad mode, autocast, default dtype,
    thread count, deterministic algorithms); any other call compiles a new version, as
    Dynamo would recompile.

    What the function closes over is not checked, as `_unchanging` already leaves out
    the modules and the module-level names: every function the suite compiles closes
    over settings fixed for its life (a frozen config, an optimizer's settings). Calls
    inside a torch.func transform, with a tensor off the CPU or in a container of
    another kind, calls past the limit of versions (8, Dynamo's default), and functions
    that do not compile as one graph go to `_dynamo_compiled`.

    Dynamo's guards and frame evaluation cost 4 to 9% of the time of the suite's
    compiled calls on a 2-core CPU (medians of interleaved rounds in one process, against
    `_dynamo_compiled`): a meta-iteration of Omniglot Reptile's 25 compiled steps took
    28.0 ms against 29.4 with torch 2.13, 29.3 against 30.6 with torch 2.14; the sine
    preset's whole compiled meta-iteration 0.255 against 0.277 ms, and 0.249 against
    0.265. The same compiled code runs either way. Its compilation reads and fills
    torch's compile caches, as Dynamo's does (`_cached_inductor`; `aot_compile` alone
    bypasses them): with the caches warm, the first call of the Omniglot CNN's compiled
    step took 3.6 and 3.7 s on that CPU where it took 11.3 to 11.8 with them bypassed,
    the sine meta-iteration's 3.3 and 3.5 s against 5.0 to 5.2."""

    LIMIT = 8

    def __init__(self, fn):
        self.fn = fn
        self.versions: list[tuple] = []
        self.whole = True  # False once fn failed to compile as one graph
        self._fallback = None

    def __call__(self, *args):
        tensors: list[Tensor] = []
        structure = _structure(args, tensors)
        if structure is None or torch._C._functorch.peek_interpreter_stack() is not None:
            return self.fallback(*args)
        structure = structure, _repeats(tensors)
        for known, state, tensor_guards, compiled in self.versions:
            if known == structure and state.check() and tensor_guards.check(*tensors):
                return compiled(*args)
        if not self.whole or len(self.versions) >= self.LIMIT or any(t.device.type != "cpu" for t in tensors):
            return self.fallback(*args)
        try:
            made = torch.compile(self.fn, dynamic=False, fullgraph=True, backend=_cached_inductor,
                                 options={"guard_filter_fn": _no_guards})
            compiled = made.aot_compile((args, {}))
            compiled.disable_guard_check()
        except Exception:  # noqa: BLE001 (a graph break, or a torch whose aot_compile cannot): Dynamo's way
            self.whole = False
            return self.fallback(*args)
        shapes, strides = [list(t.shape) for t in tensors], [list(t.stride()) for t in tensors]
        self.versions.append((structure, _GUARDS.GlobalStateGuard(),
                              _GUARDS.TensorGuards(*tensors, dynamic_dims_sizes=shapes,
                                                   dynamic_dims_strides=strides),
                              compiled))
        return compiled(*args)

    @property
    def fallback(self):
        if self._fallback is None:
            self._fallback = _dynamo_compiled(self.fn, cpu=True)
        return self._fallback


def _repeats(tensors: list[Tensor]) -> tuple:
    """Where a tensor is the same object as an earlier one, (its place, the earlier's):
    code compiled for a call that passed one tensor twice may read it once."""
    ids = [id(t) for t in tensors]
    if len(set(ids)) == len(ids):
        return ()
    first: dict[int, int] = {}
    repeats = []
    for i, x in enumerate(ids):
        if x in first:
            repeats.append((i, first[x]))
        else:
            first[x] = i
    return tuple(repeats)


def _no_guards(guards) -> list[bool]:
    return [False] * len(guards)


_PLAIN = (type(None), bool, int, float, str, torch.dtype)


def _structure(tree, tensors: list[Tensor]):
    """What a call's arguments are made of, beyond their tensors' values: the containers'
    types and keys, the other values as they are, a mark for each tensor (appended to
    `tensors`, in order); None where `tree` holds something else."""
    kind = type(tree)
    if kind is Tensor or isinstance(tree, Tensor):
        tensors.append(tree)
        return Tensor
    if kind is dict:
        values = tree.values()
        if all(type(v) is Tensor for v in values):  # the common case, quickly
            tensors.extend(values)
            return dict, tuple(tree)
        inner = tuple(_structure(v, tensors) for v in values)
        return None if None in inner else (dict, tuple(tree), inner)
    if kind is tuple or kind is list:
        inner = tuple(_structure(v, tensors) for v in tree)
        return None if None in inner else (kind, inner)
    return (kind, tree) if isinstance(tree, _PLAIN) else None


PerTask = Callable[..., tuple[Params, State, Tensor]]
"""fn(params, state, *task_tensors) -> (a dict of tensors, final optimizer state, losses)."""


def map_tasks(fn: PerTask, params: Params, state: State, tensors: tuple[Tensor, ...], *,
              batched: bool, chain_state: bool) -> tuple[Params, State, Tensor]:
    """Run `fn` on every task of a meta-batch (tasks first in each of `tensors`), all
    from the same `params`; returns its outputs stacked over tasks, the optimizer state
    to carry on, and the losses (tasks first).

    chain_state=True is the reference code's behaviour: the optimizer state flows from
    one task to the next. The serial path does exactly that. The batched path cannot
    (the tasks run at once), so every task starts from `state` and the mean of their
    final states is carried on; with chain_state=False every task starts from `state`
    and the returned state is `state` itself, identical on both paths.
    """
    if batched:
        outs, finals, losses = vmap(fn, in_dims=(None, None, *[0] * len(tensors)))(params, state, *tensors)
        carried = {k: v.mean(0) for k, v in finals.items()} if chain_state else state
        return outs, carried, losses
    results, current = [], state
    if _COMPILED == "task" and _plain():
        fn = _compiled_task(fn)
    for i in range(tensors[0].shape[0]):
        out, final, task_losses = fn(params, current if chain_state else state, *(t[i] for t in tensors))
        if chain_state:
            current = final
        results.append((out, task_losses))
    stacked = {k: torch.stack([out[k] for out, _ in results]) for k in results[0][0]}
    return stacked, current, torch.stack([l for _, l in results])


def adapt_tasks(loss: TaskLoss, opt: InnerOptimizer, params: Params, state: State,
                xs: Tensor, ys: Tensor, *, batched: bool, chain_state: bool
                ) -> tuple[Params, State, Tensor]:
    """Adapt every task of a meta-batch from the same `params` (see `map_tasks`).

    Returns the adapted parameters stacked over tasks, the state to carry on, and the
    losses (tasks x steps).
    """
    return map_tasks(partial(adapt, loss, opt), params, state, (xs, ys),
                     batched=batched, chain_state=chain_state)
