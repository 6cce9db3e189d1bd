"""Resuming a run exactly where it stopped.

A checkpoint (the run folder's `checkpoint.pt`) holds everything the rest of the run
depends on: the initialisation, the outer optimizer's state, the inner optimizer's
carried state, the state of every random generator (the meta-training sampler's, each
periodic evaluation sampler's, torch's), the meta-training seconds so far and the
length of metrics.csv at that moment. Resuming loads it, cuts metrics.csv back to that
length and continues, so a run killed at any moment and resumed ends with the same
metrics.csv and final.json as one never killed (wall-clock values aside).

Before anything is written, `resume_point` checks that the run on disk was made with
the same settings as the command resuming it; a run differs in results when any
setting does, so any difference is refused.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import torch

from .errors import BenchError
from .results import CHECKPOINT, check_metrics

FORMAT = 1  # the layout of the resume fields below; bump when it changes


def parse_every(spec: str) -> tuple[int, float]:
    """`--checkpoint-every`: "N" meta-iterations, or "Ns" / "Nm" of meta-training time.
    Returns (iterations, seconds), one of them 0."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([sm]?)\s*", str(spec))
    if not m or (not m[2] and "." in m[1]) or float(m[1]) <= 0:
        raise BenchError(f"--checkpoint-every {spec!r} is not a count or a duration: "
                         "e.g. --checkpoint-every 500 (meta-iterations) or 60s or 10m")
    if not m[2]:
        return int(m[1]), 0.0
    return 0, float(m[1]) * (60 if m[2] == "m" else 1)


class CheckpointClock:
    """When to checkpoint: every N meta-iterations, or once the given seconds have passed
    since the last checkpoint (at the end of a meta-iteration). Where checkpoints fall
    never changes a result; the last meta-iteration is always checkpointed."""

    def __init__(self, spec: str):
        self.iterations, self.seconds = parse_every(spec)
        self._last = time.monotonic()

    def due(self, done: int) -> bool:
        if self.iterations:
            return done % self.iterations == 0
        return time.monotonic() - self._last >= self.seconds

    def reset(self) -> None:
        self._last = time.monotonic()


def rng_states(train_sampler, periodic: dict[str, Any]) -> dict[str, Any]:
    """Every generator the rest of the run draws from (plain values and tensors only,
    so the checkpoint loads with weights_only=True)."""
    states = {"train": train_sampler.rng.bit_generator.state,
              "periodic": {split: s.rng.bit_generator.state for split, s in periodic.items()},
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any], train_sampler, periodic: dict[str, Any]) -> None:
    train_sampler.rng.bit_generator.state = states["train"]
    for split, s in periodic.items():
        s.rng.bit_generator.state = states["periodic"][split]
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


EXECUTION_ONLY = ("compile", "cuda_graph", "channels_last", "conv_matmul", "eval_matmul", "cudnn_benchmark")
"""Settings that change how a meta-iteration is executed, not what it computes (beyond
float tolerance): a run may be resumed with other values of them (config.json keeps the
values it started with), and runs made before they existed still resume."""


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The settings of `now` whose value in `saved` differs, as "key=saved (now value)"
    (EXECUTION_ONLY settings aside)."""
    return [f"{k}={saved.get(k)!r} (now {now[k]!r})" for k in sorted(now)
            if k not in EXECUTION_ONLY and saved.get(k) != now[k]]


def config_differences(path: Path, identity: dict[str, Any]) -> list[str] | None:
    """`differences` between the run's config.json in `path` and `identity`: none when
    there is no config.json, None when it is unreadable."""
    config_file = path / "config.json"
    if not config_file.is_file():
        return []
    try:
        return differences(json.loads(config_file.read_text()), identity)
    except ValueError:
        return None


def _refuse(path: Path, where: str, diffs: list[str]) -> BenchError:
    shown = ", ".join(diffs[:3]) + (f" and {len(diffs) - 3} more" if len(diffs) > 3 else "")
    return BenchError(f"cannot resume {path}: its {where} was made with other settings: {shown}; "
                      "resume with the run's own settings (see its config.json) or pass --force to start over")


def load_checkpoint(file: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """torch.load(weights_only=True), with a one-line error for a broken file."""
    try:
        return torch.load(file, map_location=device, weights_only=True)
    except Exception as e:  # a truncated, foreign or unsafe file: all the same to the user
        first = " ".join(str(e).split())[:200]
        raise BenchError(f"cannot resume {file.parent}: {file.name} is unreadable ({type(e).__name__}: "
                         f"{first}); pass --force to start the run over") from None


def resume_point(path: Path, identity: dict[str, Any], device: torch.device) -> dict[str, Any] | None:
    """The checkpoint to resume the run in `path` from, or None when the run stopped
    before its first checkpoint (it then starts over). Raises, writing nothing, when the
    run's config.json or checkpoint comes from other settings than `identity` (the
    resolved settings plus algo, preset, seed, device and evaluation protocols), or when
    its metrics.csv no longer matches the checkpoint."""
    diffs = config_differences(path, identity)
    if diffs is None:  # unreadable: nothing of it can be trusted
        diffs = differences({}, identity)
    if diffs:
        raise _refuse(path, "config.json", diffs)
    file = path / CHECKPOINT
    if not file.is_file():
        return None
    ckpt = load_checkpoint(file, device)
    if ckpt.get("format") != FORMAT:
        raise BenchError(f"cannot resume {path}: its {CHECKPOINT} has no resume state (format "
                         f"{ckpt.get('format')!r}, expected {FORMAT}); pass --force to start the run over")
    if diffs := differences(ckpt.get("run", {}), identity):
        raise _refuse(path, CHECKPOINT, diffs)
    check_metrics(path / "metrics.csv", ckpt["metrics_bytes"])
    return ckpt
