"""Run folders and the files in them (schema documented in the README).

results/<preset>/<algo>/seed<k>/
    config.json   every resolved setting, plus preset, algo, seed, overrides, device
    env.json      versions, device, git commit
    metrics.csv   tidy rows: step, wall_s, split, metric, value
    final.json    the final evaluation: metric, value, ci95, tasks, ...
    checkpoint.pt everything needed to resume: the initialisation, the outer and inner
                  optimizer states, every generator's state, the metrics.csv length
                  (torch.load(weights_only=True))
    state.json    the state marker: running, finished or failed (with the message)

Every file is written whole (a temporary file renamed over it) except metrics.csv,
which grows by whole flushed rows.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .data.root import is_writable_dir
from .errors import BenchError

METRICS_COLUMNS = ("step", "wall_s", "split", "metric", "value")
CHECKPOINT = "checkpoint.pt"
STATE = "state.json"
# Everything a run writes (removed by --force; nothing else in the folder is touched).
RUN_FILES = ("config.json", "env.json", "metrics.csv", "final.json", CHECKPOINT, STATE,
             "variance.csv", "sine_predictions.csv")
RUNNING, FINISHED, FAILED = "running", "finished", "failed"


def method_name(algo: str, meta_grads: str = "", mean: bool = False, transductive: bool | None = None) -> str:
    """The run folder's method part: the algorithm, for the gradient sums which ones
    (`gradsum-1+2`, `gradsum-mean-1+2`), and `-transductive` (`-nontransductive`) when
    the run's scoring differs from its preset's, so the variants of one preset (the
    paper's "Reptile" and "Reptile + transduction" rows) do not overwrite each other."""
    name = algo if algo != "gradsum" else f"gradsum-{'mean-' if mean else ''}{meta_grads}"
    if transductive is None:
        return name
    return f"{name}-{'' if transductive else 'non'}transductive"


def run_method(algo: str, cfg, preset: str) -> str:
    """`method_name` for a run of `algo` with the resolved settings `cfg` from `preset`."""
    from .config import available_presets, preset_values

    default = preset_values(preset).get("transductive") if preset in available_presets() else None
    variant = cfg.transductive if default is not None and cfg.transductive != default else None
    return method_name(algo, cfg.meta_grads, cfg.meta_grads_mean, variant)


def run_dir(results: Path, preset: str, method: str, seed: int) -> Path:
    return Path(results) / preset / method / f"seed{seed}"


def has_run(path: Path) -> bool:
    """True when `path` holds any file of a run."""
    return path.is_dir() and any((path / name).exists() for name in (*RUN_FILES, "snapshots"))


def check_writable(path: Path) -> None:
    """Raise unless `path` (or, when it does not exist yet, the nearest folder above it
    that does) may be written to. Creates nothing."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not is_writable_dir(existing):
        raise BenchError(f"cannot write to the results folder {path} ({existing} is not a writable folder): "
                         "choose another with --results DIR or make it writable")


def clear_run(path: Path) -> None:
    """Remove a run's files (for --force); other files in the folder stay."""
    for name in RUN_FILES:
        (path / name).unlink(missing_ok=True)
    shutil.rmtree(path / "snapshots", ignore_errors=True)


def clear_temporaries(path: Path) -> None:
    """Remove the temporary files a killed writer left in a run folder (call with the
    run's lock held: then no live process is writing them)."""
    for tmp in [*path.glob(".*.tmp"), *path.glob("snapshots/.*.tmp")]:
        tmp.unlink(missing_ok=True)


class RunLock:
    """An exclusive lock on a run folder (flock on the folder itself, so no lock file is
    left behind), held while a process writes the run. The kernel drops it when the
    process dies, even by SIGKILL, so a run left "running" with no lock held was killed."""

    def __init__(self, path: Path):
        self.path, self._fd = path, None

    def acquire(self) -> "RunLock":
        if self._fd is None:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise BenchError(f"the run in {self.path} is in progress in another process: wait for it, "
                                 "or stop it and continue it with --resume") from None
            self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None


def is_locked(path: Path) -> bool:
    """True while a process holds the run's lock (the run is really in progress)."""
    try:
        RunLock(path).acquire().release()
    except BenchError:
        return True
    return False


def read_state(path: Path) -> dict[str, Any] | None:
    """The run's state marker (`state.json`: "state" is running, finished or failed), or
    None when there is none. A run written before markers existed counts as finished
    when it has its final.json."""
    try:
        return json.loads((path / STATE).read_text())
    except FileNotFoundError:
        return {"state": FINISHED} if (path / "final.json").is_file() else None
    except (OSError, ValueError) as e:
        return {"state": FAILED, "message": f"unreadable {STATE} ({e})"}


def write_state(path: Path, state: str, **fields: Any) -> None:
    """Write the state marker atomically, with the writer's process and the time."""
    write_json(path / STATE, {"state": state, **fields, "pid": os.getpid(), "host": socket.gethostname(),
                              "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def _atomic(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write through `write(file)` to a temporary file in the same folder, flush it to
    disk, then rename it over `path`: readers see the old file or the new one, never a
    part, whenever the process dies."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"newline": ""} if "b" not in mode else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically."""
    def write(f):
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    _atomic(path, write)


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write dict rows as CSV atomically (columns from the first row)."""
    def write(f):
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    _atomic(path, write)


def save_checkpoint(path: Path, data: dict) -> None:
    """torch.save atomically."""
    import torch  # here, not at the top: the report reads run folders without torch

    _atomic(path, lambda f: torch.save(data, f), "wb")


class MetricsWriter:
    """Appends whole tidy rows to metrics.csv and flushes each one.

    Values are written with Python's shortest round-trip repr, so the same numbers
    always give the same bytes (the determinism check compares files). `offset` is the
    file's length after the last whole row; a checkpoint records it, and resuming
    (`resume_at`) cuts the file back to it, dropping the rows written after the
    checkpoint and any row a kill cut short.
    """

    HEADER = (",".join(METRICS_COLUMNS) + "\n").encode()

    def __init__(self, path: Path, resume_at: int | None = None):
        if resume_at is None:
            self._file = open(path, "wb")
            self._file.write(self.HEADER)
        else:
            check_metrics(path, resume_at)
            self._file = open(path, "r+b")
            self._file.truncate(resume_at)
            self._file.seek(resume_at)
        self._file.flush()

    @property
    def offset(self) -> int:
        return self._file.tell()

    def write(self, step: int, wall_s: float, split: str, metric: str, value: float) -> None:
        row = io.StringIO()
        csv.writer(row, lineterminator="\n").writerow([step, f"{wall_s:.3f}", split, metric, repr(float(value))])
        self._file.write(row.getvalue().encode())  # one write of the whole row
        self._file.flush()

    def sync(self) -> None:
        """Flush to disk (before a checkpoint records the offset)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def check_metrics(path: Path, length: int) -> None:
    """Raise unless metrics.csv starts with its header and holds at least `length` bytes
    (what a checkpoint recorded). Reads only."""
    try:
        with open(path, "rb") as f:
            header = f.read(len(MetricsWriter.HEADER))
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise BenchError(f"cannot resume {path.parent}: its metrics.csv is unreadable ({e.strerror}); "
                         "pass --force to start the run over") from None
    if header != MetricsWriter.HEADER or size < length:
        raise BenchError(f"cannot resume {path.parent}: its metrics.csv was changed after the checkpoint "
                         f"({size} bytes, the checkpoint recorded {length}); pass --force to start the run over")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(device) -> dict[str, Any]:
    """Versions and hardware of a run on `device` (a torch.device)."""
    import torch

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
