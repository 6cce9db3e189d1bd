"""`--fast`: the execution settings measured fastest for a run's device and path, in one flag.

Every preset leaves the speed settings off (a safe default); the fastest combination
depends on the device, the task's network and whether the preset's path is the serial or
the batched one, and is spelled out in the README's "Settings that change results". This
chooses it. Each setting it sets changes cost, not results (beyond float tolerance: the
tests compare every one with the plain path), and a `--set` of the same setting wins.
The choices follow the speed tables (`python -m bench speed`; `results/speed/cpu.csv`,
2-core CPU, and `results/speed/cuda.csv`, H200), medians in ms per meta-iteration:

- CPU, CNN, serial path: `compile`, `channels_last`. Omniglot Reptile 28.6 against
  71.4 on the serial path, joint training 8.5 against 18.0.
- CPU, CNN, batched path where it is the serial path's maths (SGD, or a fresh inner state
  per task: the MAML presets, `omniglot-gradsum`): `batched = false` and the same two.
  FOMAML 44.7 against 61.5 batched, MAML 84.7 against 143.5.
- CPU, sine: `compile`, 0.27 against 1.39.
- CUDA, CNN, serial path (Reptile, joint training, the gradient sums): `cuda_graph`,
  `compile`, `channels_last`, `eval_matmul`, the float32 combination of the timed Omniglot
  Reptile run of `reports/gpu/nvidia-h200-2026-11-28.md` (5.76 ms per meta-iteration);
  the compiled and graphed serial path is 7.2 against 97.7 in the speed table.
- CUDA, CNN, batched path, FOMAML's and MAML's serial paths, and any run with
  `--batch-seeds`: `cuda_graph`. MAML 8.8 against 38.2 on its batched path.
- CUDA, sine: `cuda_graph`, `compile`, 0.81 against 7.07.

Not measured, so left as they are: Mini-ImageNet's network, and seeds trained together
(`--batch-seeds`) on the CPU. Compiling costs seconds to minutes once per process (the
README gives the times), so `--fast` pays on long runs, not on a few meta-iterations.
"""

from __future__ import annotations

from .config import Config

CNN_TASKS = ("omniglot",)
"""The networks whose fast settings were measured (Mini-ImageNet's was not)."""
SERIAL_TASK_UNITS = ("fomaml", "maml")
"""Algorithms whose serial path compiles a whole task at a time: on CUDA, compiled and
graphed together only on the batched path was tested, so their serial path gets the graph
alone."""


def fast_settings(cfg: Config, algo: str, device: str, batch_seeds: bool = False) -> tuple[dict[str, str], str]:
    """The `--set` values `--fast` adds for a run of `algo` with settings `cfg` on `device`
    ("cpu" or "cuda"), and a few words on why (or why none)."""
    if cfg.task not in (*CNN_TASKS, "sine"):
        return {}, f"no fast settings were measured for the {cfg.task} network"
    same_maths = cfg.inner_optimizer == "sgd" or cfg.inner_state == "reset"
    if device == "cuda":
        if cfg.task == "sine" and not batch_seeds:
            return {"cuda_graph": "true", "compile": "true"}, "CUDA, sine"
        if batch_seeds or cfg.batched or algo in SERIAL_TASK_UNITS:
            which = ("seeds trained together" if batch_seeds else "batched path" if cfg.batched
                     else f"{algo}'s serial path")
            return {"cuda_graph": "true"}, f"CUDA, {which}"
        return ({"cuda_graph": "true", "compile": "true", "channels_last": "true", "eval_matmul": "true"},
                "CUDA, serial path")
    if batch_seeds:
        return {}, "no fast settings were measured for seeds trained together on the CPU"
    if cfg.task == "sine":
        return {"compile": "true"}, "CPU, sine"
    if cfg.batched and not same_maths:
        return {}, "the batched path with a carried inner state has no measured fast settings on the CPU"
    serial = {"batched": "false"} if cfg.batched else {}
    return ({**serial, "compile": "true", "channels_last": "true"},
            "CPU, serial path" + (" (the batched path's maths here)" if serial else ""))


def with_fast(overrides: dict[str, str], cfg: Config, algo: str, device: str,
              batch_seeds: bool = False) -> tuple[dict[str, str], str]:
    """`overrides` with `fast_settings` added under them (a `--set` of the same key wins),
    and the line that says what was added."""
    fast, why = fast_settings(cfg, algo, device, batch_seeds)
    added = {k: v for k, v in fast.items() if k not in overrides}
    if not added:
        return overrides, f"--fast: nothing added ({why if not fast else 'every one set by --set'})"
    shown = " ".join(f"{k}={v}" for k, v in added.items())
    return {**added, **overrides}, f"--fast: {shown} ({why}; execution only, the results are the same)"
