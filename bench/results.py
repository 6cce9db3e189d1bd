"""Run folders and the files in them (schema documented in the README).

results/<preset>/<algo>/seed<k>/
    config.json   every resolved setting, plus preset, algo, seed, overrides, device
    env.json      versions, device, git commit
    metrics.csv   tidy rows: step, wall_s, split, metric, value
    final.json    the final evaluation: metric, value, ci95, tasks, ...
    checkpoint.pt the initialisation and optimizer states (torch.load(weights_only=True))
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import BenchError

METRICS_COLUMNS = ("step", "wall_s", "split", "metric", "value")
RUN_FILES = ("config.json", "env.json", "metrics.csv", "final.json", "checkpoint.pt")


def method_name(algo: str, meta_grads: str = "", mean: bool = False) -> str:
    """The run folder's method part: the algorithm, and for the gradient sums which
    ones (`gradsum-1+2`, `gradsum-mean-1+2`), so the combinations of one preset do not
    overwrite each other."""
    if algo != "gradsum":
        return algo
    return f"gradsum-{'mean-' if mean else ''}{meta_grads}"


def run_dir(results: Path, preset: str, method: str, seed: int) -> Path:
    return Path(results) / preset / method / f"seed{seed}"


def prepare_run_dir(path: Path, *, force: bool) -> None:
    """Create the run folder; refuse to overwrite an existing run unless `force`."""
    if path.exists() and any(path.iterdir()):
        if not force:
            raise BenchError(f"a run already exists in {path}: pass --force to overwrite it "
                             "or choose another --seed/--results")
        for name in RUN_FILES:
            (path / name).unlink(missing_ok=True)
        shutil.rmtree(path / "snapshots", ignore_errors=True)
        for name in ("variance.csv", "sine_predictions.csv"):
            (path / name).unlink(missing_ok=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe", delete=True)
        probe.close()
    except OSError as e:
        raise BenchError(f"cannot write to the results folder {path} ({e.strerror}): "
                         "choose another with --results DIR") from None


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a temporary file in the same folder, then a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write dict rows as CSV atomically (columns from the first row)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def save_checkpoint(path: Path, data: dict) -> None:
    """torch.save atomically (temporary file, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    torch.save(data, tmp)
    os.replace(tmp, path)


class MetricsWriter:
    """Appends whole tidy rows to metrics.csv and flushes each one.

    Values are written with Python's shortest round-trip repr, so the same numbers
    always give the same bytes (the determinism check compares files).
    """

    def __init__(self, path: Path):
        self._file = open(path, "w", newline="")
        self._csv = csv.writer(self._file, lineterminator="\n")
        self._csv.writerow(METRICS_COLUMNS)
        self._file.flush()

    def write(self, step: int, wall_s: float, split: str, metric: str, value: float) -> None:
        self._csv.writerow([step, f"{wall_s:.3f}", split, metric, repr(float(value))])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "cpu_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }
    try:
        env["bench"] = metadata.version("bench")
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        env["bench"] = None
    return env
