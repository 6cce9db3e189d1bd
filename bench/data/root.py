"""Where data sets and caches live, and whether a folder may be written to."""

from __future__ import annotations

import os
import stat
from pathlib import Path

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
