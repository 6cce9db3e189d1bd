"""Typed run settings, the TOML presets that pin them, and `--set key=value` overrides.

Every setting that can change a result lives in `Config`, with a docstring saying
what it means. Presets (``bench/presets/*.toml``) pin every value with a comment
citing its source; nothing a preset leaves out is silently defaulted (a preset
that omits a setting is an error), so a run is fully described by its preset
name plus the overrides recorded in ``config.json``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TASKS = ("omniglot", "miniimagenet", "sine")
OPTIMIZERS = ("sgd", "adam")
INNER_STATES = ("carry", "reset")
TAILS = ("shared", "separate")
ACTIVATIONS = ("tanh", "relu")
MAML_MEMORY = ("recompute", "unrolled")
AUTOCAST = ("off", "tf32", "bf16")


@dataclass(frozen=True)
class Config:
    """All settings of one run. Field names follow the paper's vocabulary (STYLE.md)."""

    # --- the task -------------------------------------------------------------
    task: str
    """Data set: "omniglot", "miniimagenet" or "sine"."""
    ways: int
    """Classes per episode (N). Ignored by the sine task."""
    shots: int
    """Support examples per class at evaluation (K); for the sine task, support points."""
    train_shots: int
    """Examples per class drawn for each meta-training task (the reference's --train-shots);
    for the sine task, the points of one training task."""
    val_chars: int
    """Omniglot characters carved from the end of the 1,200 meta-training characters as a
    validation split for model selection (0: the paper's protocol, no validation split).
    Omniglot only: Mini-ImageNet has its own 16-class validation split, and this must be 0."""
    activation: str
    """Hidden activation of the sine MLP: "tanh" (the public example) or "relu" (the paper)."""

    # --- the inner loop (per task) --------------------------------------------
    inner_optimizer: str
    """"sgd" or "adam" (functional, over parameter dicts)."""
    inner_lr: float
    """Inner learning rate (alpha)."""
    inner_beta1: float
    """Adam's beta1 for the inner loop (the Reptile paper uses 0)."""
    inner_beta2: float
    """Adam's beta2 for the inner loop."""
    inner_eps: float
    """Adam's epsilon for the inner loop."""
    inner_steps: int
    """Inner minibatches per meta-training task (k). Reptile, joint training and the
    gradient sums take an optimizer step on each; FOMAML and MAML adapt on the first
    k - 1 and take the meta-gradient on the k-th, the query or "tail" (the reference
    code's convention and the paper's g_k)."""
    inner_batch: int
    """Examples per inner minibatch; minibatches are drawn without replacement, reshuffling
    when the task's examples run out (the reference's `_mini_batches`)."""
    inner_state: str
    """What happens to the inner optimizer's state (Adam moments and step count) between
    tasks: "carry" keeps it from task to task and into evaluation, as the reference code
    does (only the weights are reset); "reset" starts every task from a fresh state.
    The batched path cannot chain the state from task to task within a meta-batch: all
    tasks of a meta-batch start from the carried state and the mean of their final states
    is carried to the next meta-iteration (see `algorithms.inner`)."""

    tail: str
    """Where FOMAML's and MAML's final (query) minibatch comes from in meta-training:
    "shared", the last of the inner minibatches drawn from the same train_shots examples
    per class (it overlaps the earlier ones once they use up the examples), or
    "separate", `query_shots` further examples per class held out from the inner
    minibatches (Reptile paper section 6.3). Unused by the other algorithms."""
    query_shots: int
    """Examples per class held out as the query set, beside the train_shots, when `tail`
    is "separate" (0 when unused)."""
    maml_memory: str
    """How second-order MAML differentiates through the inner loop: "recompute" keeps
    only each step's starting weights and state and recomputes one step at a time on
    the way back (memory bounded as inner steps grow, about one more inner step's
    compute per step); "unrolled" keeps the whole unrolled loop's graph (faster at a
    few steps; memory grows with every step). Same meta-gradient (`python -m bench
    memory` compares them)."""
    meta_grads: str
    """For `gradsum`: the inner-step gradients g_i summed into the meta-gradient, e.g.
    "2" or "1+2+3" (Reptile paper section 6.2); each i at most inner_steps."""
    meta_grads_mean: bool
    """For `gradsum`: divide the sum by its number of terms."""

    # --- the outer loop -------------------------------------------------------
    meta_optimizer: str
    """How the meta-update moves the initialisation: "sgd" (for Reptile with meta_lr 1 this
    is the paper's interpolation phi <- phi + eps (W - phi)) or "adam" (the update fed as a
    gradient to Adam)."""
    meta_lr: float
    """Outer step size (epsilon) at the first meta-iteration."""
    meta_lr_final: float
    """Outer step size at the last meta-iteration, reached by linear annealing."""
    meta_batch: int
    """Tasks per meta-iteration (n)."""
    meta_iters: int
    """Meta-iterations."""

    # --- evaluation -----------------------------------------------------------
    eval_steps: int
    """Inner steps when fine-tuning on a test task's support set."""
    eval_batch: int
    """Minibatch size when fine-tuning on a test task."""
    eval_tasks: int
    """Test tasks in the final evaluation."""
    eval_queries: int
    """Query examples per class in each evaluation task (the reference uses 1); for the
    sine task the queries are always the 50 grid points and this must be 50."""
    transductive: bool
    """Classify all queries of a task in one batch (sharing batch-norm statistics); else each
    query is classified in a batch made of the support set plus that one query."""
    eval_every: int
    """Meta-iterations between periodic evaluations during training (0: none)."""
    eval_every_tasks: int
    """Tasks per split in each periodic evaluation."""
    log_every: int
    """Meta-iterations between training-loss rows in metrics.csv."""
    snapshots: int
    """Save the initialisation (weights and inner optimizer state) at `snapshots` + 1
    evenly spaced meta-iterations, the start and the end included, under the run's
    `snapshots/` folder, for `python -m bench variance` (0: none)."""

    # --- execution (no effect on the maths beyond float tolerance) ---------------
    batched: bool
    """Adapt the meta-batch's tasks in one computation (torch.func.vmap) rather than one by
    one. Identical results when inner_state is "reset" or the inner optimizer is SGD."""
    eval_chunk: int
    """Evaluation tasks adapted in one batched computation; 0 chooses by device (25 on the
    CPU, where larger batches of per-task convolutions run slower, 1000 on a GPU)."""
    compile: bool
    """Compile the meta-iteration's computation with torch.compile: on the CNNs' serial
    paths each inner step (Reptile, joint training, the gradient sums) or each task's
    adaptation and query gradient (FOMAML, MAML), compiled once and called for every
    minibatch or task (seconds to a minute or two of compilation); on the batched paths and
    for the sine MLP the whole meta-iteration, its steps unrolled (minutes for the CNNs on
    the CPU; `bench.runner.compile_unit`). The compiled code computes the same maths with
    fused kernels, equal to the plain path within float tolerance. On the CPU it computes
    the convolutions with small outputs as matrix products over the image patches
    (`bench.models.Conv2d`): in float32 code that computes one task (the serial paths'
    steps and tasks, evaluation one task at a time), every convolution of the Omniglot
    CNN (strided, at most 196 outputs), whose products oneDNN then computes
    (`algorithms.onednn`); elsewhere its last two (at most 16 outputs). The Mini-ImageNet
    CNN's convolutions (stride 1) stay the library's. Evaluation compiles its inner step
    over a chunk of test tasks (vmapped; on the CPU with channels_last, one task's) and
    their scoring, once per run (`bench.evaluate`)."""
    cuda_graph: bool
    """Record each meta-iteration's computation as a CUDA graph once and replay it
    (`bench.graphs`): one launch instead of hundreds of small kernel launches from
    Python. The same kernels on the same numbers as the plain path. CUDA only. With
    `compile`, the compiled computation is recorded: its fused kernels, replayed."""
    channels_last: bool
    """Keep the convolution weights and the images in channels-last memory order (NHWC).
    On CUDA for the serial paths only, and evaluation there adapts in the default order
    (torch cannot differentiate channels-last convolutions under vmap on CUDA:
    `bench.models.check_layout`). On the CPU it speeds up the compiled serial path
    (oneDNN's convolutions on NHWC tensors, no layout copies) and slows the batched ones,
    whose vmapped convolutions become grouped ones (see README, speed); on CUDA it is
    meant to spare cuDNN's layout conversions around its NHWC kernels. No effect on the
    sine MLP; the same maths, equal to the default order within float tolerance."""
    conv_matmul: bool
    """Compute every convolution as one matrix product over the image patches
    (`bench.models.conv_as_matmul`: im2col by strided slices, then a matrix product)
    instead of the library's convolution (cuDNN, oneDNN). Under vmap with weights that
    differ per task (evaluation, the batched paths after a task's first step), the
    library's convolution becomes one grouped convolution, slow on GPUs
    (`python -m bench speed --evaluation` compares them); the matrix products become one
    batched matrix product. The same maths, equal within float tolerance. Off, the
    compiled CPU path still computes its small convolutions this way (see `compile`)."""
    eval_matmul: bool
    """Evaluation computes every convolution as `conv_matmul` does, whatever conv_matmul
    says for meta-training: the vmapped adaptation of a chunk of test tasks, whose
    library convolutions become grouped ones, as batched matrix products, while
    meta-training keeps the library's convolutions (on CUDA, cuDNN's, channels-last
    where `channels_last` asks for it). The same maths, equal within float tolerance."""
    cudnn_benchmark: bool
    """CUDA: let cuDNN time its algorithms for each convolution shape at its first call and
    keep the fastest (`torch.backends.cudnn.benchmark`) rather than pick one by its
    heuristics. Meta-training's step calls the same few convolutions of tiny batches
    100,000 times, whose algorithm decides most of a graphed step's time. cuDNN keeps
    one plan per convolution shape for the whole process, whichever setting chose it
    first. Another algorithm may round otherwise: equal to the plain path within float
    tolerance. No effect on the CPU."""
    autocast: str
    """"off": float32 throughout, on a GPU too (PyTorch's default lets cuDNN convolutions
    use TensorFloat-32, which the suite turns off). "tf32": float32 tensors, but
    convolutions and matrix products on a GPU's tensor cores in TensorFloat-32 (10 bits
    of mantissa; no effect on the CPU). "bf16": convolutions and linear layers in
    bfloat16 under torch.autocast, batch norm and activations in float32. Both apply in
    meta-training and evaluation alike and, unlike the settings above, change results
    (bfloat16 keeps 8 bits of mantissa)."""

    def replace(self, **changes: Any) -> "Config":
        return validate(dataclasses.replace(self, **changes))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in fields(Config)}
_TYPES = get_type_hints(Config)
_CHOICES = {
    "task": TASKS,
    "inner_optimizer": OPTIMIZERS,
    "meta_optimizer": OPTIMIZERS,
    "inner_state": INNER_STATES,
    "activation": ACTIVATIONS,
    "tail": TAILS,
    "maml_memory": MAML_MEMORY,
    "autocast": AUTOCAST,
}
_POSITIVE = {
    "ways", "shots", "train_shots", "inner_lr", "inner_steps", "inner_batch", "meta_lr",
    "meta_batch", "meta_iters", "eval_steps", "eval_batch", "eval_tasks", "eval_queries",
    "eval_every_tasks", "log_every", "inner_eps",
}
_NON_NEGATIVE = {"snapshots", "val_chars", "meta_lr_final", "eval_every", "eval_chunk", "query_shots"}


def _unknown(kind: str, name: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"choose one of: {', '.join(known)}"
    return ConfigError(f"unknown {kind} {name!r}: {hint}")


def parse_names(option: str, spec: str, known: list[str], kind: str) -> list[str]:
    """The names of a comma-separated option ("a,b"), each one of `known` (a `kind`),
    in order, without repeats; a one-line ConfigError otherwise."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"{option} {spec!r}: name at least one of {', '.join(known)}")
    for n in names:
        if n not in known:
            raise _unknown(kind, n, known)
    return list(dict.fromkeys(names))


def parse_value(key: str, raw: Any) -> Any:
    """Convert a TOML value or a `--set` string to the field's type, or raise ConfigError."""
    if key not in _FIELDS:
        raise _unknown("setting", key, sorted(_FIELDS))
    typ = _TYPES[key]
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
            return raw.lower() in ("true", "1", "yes")
    elif typ is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str):
            try:
                return int(raw.replace("_", ""))
            except ValueError:
                pass
    elif typ is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                pass
    elif typ is str and isinstance(raw, str):
        return raw
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[typ]
    raise ConfigError(f"setting {key!r} must be {kind}, got {raw!r}: e.g. --set {key}="
                      + {bool: "true", int: "10", float: "0.001", str: "..."}[typ])


def validate(cfg: Config) -> Config:
    """Check choices and ranges; return cfg unchanged or raise a one-line ConfigError."""
    for key, choices in _CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise ConfigError(f"setting {key!r} is {getattr(cfg, key)!r}: choose one of {', '.join(choices)}")
    for key in _POSITIVE:
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"setting {key!r} must be greater than 0, got {getattr(cfg, key)!r}")
    for key in _NON_NEGATIVE:
        if getattr(cfg, key) < 0:
            raise ConfigError(f"setting {key!r} must be 0 or more, got {getattr(cfg, key)!r}")
    for key in ("inner_beta1", "inner_beta2"):
        if not 0 <= getattr(cfg, key) < 1:
            raise ConfigError(f"setting {key!r} must be in [0, 1), got {getattr(cfg, key)!r}")
    terms = cfg.meta_grads.split("+")
    if not all(t.strip().isdigit() and int(t) >= 1 for t in terms) or len(set(map(int, terms))) != len(terms):
        raise ConfigError(f"setting 'meta_grads' is {cfg.meta_grads!r}: name distinct inner steps (from 1) "
                          "joined by '+', e.g. --set meta_grads=1+2")
    if cfg.task == "miniimagenet" and cfg.val_chars != 0:
        raise ConfigError(f"setting 'val_chars' is {cfg.val_chars}, but it carves Omniglot characters only "
                          "(Mini-ImageNet has its own 16-class val split): --set val_chars=0")
    if cfg.task == "sine" and cfg.eval_queries != 50:
        raise ConfigError("setting 'eval_queries' must be 50 for the sine task (the 50 grid points)")
    return cfg


def available_presets() -> list[str]:
    folder = resources.files("bench") / "presets"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def preset_values(name: str) -> dict[str, Any]:
    """The raw values of a preset file (without validation)."""
    if name not in available_presets():
        raise _unknown("preset", name, available_presets())
    text = (resources.files("bench") / "presets" / f"{name}.toml").read_text()
    return tomllib.loads(text)


ALGO_KEYS = ("tail", "query_shots", "meta_optimizer", "meta_lr", "meta_lr_final", "meta_batch")
"""The settings a preset may set per algorithm (its `[algo.<name>]` tables): how the
meta-gradient's query is drawn and how the outer loop applies it. The task, the inner
loop and the evaluation stay the same for every algorithm of a comparison."""


def algo_settings(preset: str, algo: str | None) -> dict[str, Any]:
    """The preset's `[algo.<algo>]` table (typed), empty when it has none."""
    table = preset_values(preset).get("algo", {}).get(algo, {}) if algo else {}
    bad = sorted(set(table) - set(ALGO_KEYS))
    if bad:
        raise ConfigError(f"preset {preset!r} sets {', '.join(bad)} for {algo}: only {', '.join(ALGO_KEYS)} "
                          "may differ per algorithm (the task, inner loop and evaluation are shared)")
    return {k: parse_value(k, v) for k, v in table.items()}


def load_config(preset: str, overrides: dict[str, Any] | None = None, algo: str | None = None) -> Config:
    """The preset's settings, then its settings for `algo` (if any), then `overrides`,
    typed and validated."""
    values = {k: parse_value(k, v) for k, v in preset_values(preset).items() if k != "algo"}
    missing = sorted(set(_FIELDS) - set(values))
    if missing:
        raise ConfigError(f"preset {preset!r} does not pin {', '.join(missing)}: add them to its TOML file")
    values.update(algo_settings(preset, algo))
    for key, raw in (overrides or {}).items():
        values[key] = parse_value(key, raw)
    return validate(Config(**values))


def parse_overrides(items: list[str]) -> dict[str, str]:
    """Parse `--set key=value` strings (types are checked later, against the fields)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}: e.g. --set meta_iters=1000")
        parse_value(key.strip(), value.strip())  # fail early on unknown keys and bad types
        out[key.strip()] = value.strip()
    return out


def saved_config(run: Path, how: str) -> tuple[Config, dict[str, Any]]:
    """A run folder's settings from its config.json (a setting added since it ran takes
    its preset's value), validated, and the raw file. `how` ends the error raised for a
    folder without a readable config.json: what kind of folder to give instead."""
    try:
        saved = json.loads((Path(run) / "config.json").read_text())
        if not isinstance(saved, dict):
            raise ValueError(f"a JSON {type(saved).__name__}, not an object")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{run}: no readable config.json ({e}): {how}") from None
    values = {k: v for k, v in saved.items() if k in _FIELDS}
    missing = sorted(set(_FIELDS) - set(values))
    if missing:
        base = load_config(saved["preset"]).to_dict()
        values.update({k: base[k] for k in missing})
    return validate(Config(**values)), saved
