"""Where data sets and caches live, whether a folder may be written to, and cache files."""

from __future__ import annotations

import os
import stat
import tempfile
import warnings
from pathlib import Path

import numpy as np
import platformdirs


def data_root(value: str | os.PathLike | None = None) -> Path:
    """The data root: `value` (the CLI's --data DIR) if given, else env BENCH_DATA,
    else the user cache's ``data`` folder. Returned expanded and resolved; not created."""
    if value is None:
        value = os.environ.get("BENCH_DATA") or Path(platformdirs.user_cache_dir("bench")) / "data"
    return Path(value).expanduser().resolve()


def cache_dir() -> Path:
    """The per-user cache folder: env BENCH_CACHE if set, else the platform's user cache.
    Not created here; writers create it when they need it."""
    value = os.environ.get("BENCH_CACHE") or platformdirs.user_cache_dir("bench")
    return Path(value).expanduser().resolve()


def is_writable_dir(path: Path) -> bool:
    """True only if `path` is an existing folder we may write to.

    os.access alone is not enough: as root it says yes even for a folder whose mode
    has no write bits, which is how a shared read-only data copy is marked. Requiring
    the owner-write bit as well keeps us from ever writing into such a folder.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISDIR(mode) and bool(mode & stat.S_IWUSR) and os.access(path, os.W_OK)


def load_arrays(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays `names` of a cache file (.npz), or None when the file is missing,
    partial or foreign: a cache miss, never an error."""
    try:
        # Our own handle: np.load leaves the one it opens open when the zip is corrupt.
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as f:
            return {name: f[name] for name in names}
    except Exception:
        return None


def save_arrays(path: Path, arrays: dict[str, np.ndarray], what: str) -> None:
    """Write a compressed .npz cache atomically (a temporary file in the same folder,
    then os.replace), so a killed process never leaves a half-written cache; readable by
    everyone sharing the folder. Failing to write only costs speed: it warns."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        message = " ".join(str(exc).split()) or type(exc).__name__
        warnings.warn(f"could not write the {what} cache {path}: {message}", stacklevel=3)
