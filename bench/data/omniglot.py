"""Omniglot, read and preprocessed exactly as the Reptile reference code does it.

PAPERS.md section 4 ("Omniglot") gives the protocol this module reproduces: both
official sets pooled (50 alphabets, 1,623 characters), alphabets and then
``characterNN`` folders sorted by name, the list shuffled with Python's
``random`` seeded 0, the first 1,200 characters for meta-training; each 105x105
1-bit PNG resized to 28x28 (nearest neighbour), training characters augmented
with rotations by multiples of 90 degrees.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from bench.data.root import cache_dir, is_writable_dir, load_arrays, save_arrays
from bench.errors import ConfigError, DataError

_RELEASE = "https://github.com/brendenlake/omniglot/raw/master/python"
_RELEASE_PAGE = "https://github.com/brendenlake/omniglot/tree/master/python"  # for people

OMNIGLOT_ARCHIVES: dict[str, tuple[str, str]] = {
    # name -> (official URL, MD5 published for the official archive; see the data README)
    "images_background": (f"{_RELEASE}/images_background.zip", "68d2efa1b9178cc56df9314c21c6e718"),
    "images_evaluation": (f"{_RELEASE}/images_evaluation.zip", "6b91aef0f799c5bb55b94e3f2daec811"),
}

# What each set must hold: (alphabets, characters); every character has 20 drawings.
_EXPECTED = {"images_background": (30, 964), "images_evaluation": (20, 659)}
_N_ALPHABETS = 50  # 30 + 20
N_CHARACTERS = 1623  # 964 + 659
N_DRAWINGS = 20
SOURCE_SIZE = (105, 105)
IMAGE_SIZE = 28
# Part of the cache key: change the version whenever the preprocessing changes.
_PREPROCESSING = f"omniglot-v1-{IMAGE_SIZE}x{IMAGE_SIZE}"

# What a truncated or corrupt zip or PNG can raise while being read and decoded
# (found by fuzzing corrupted copies of the archives and PNGs).
_READ_ERRORS = (
    zipfile.BadZipFile, zlib.error, EOFError, OSError, SyntaxError, ValueError,
    NotImplementedError, RuntimeError, Image.DecompressionBombError,
)


@dataclass(frozen=True)
class OmniglotImages:
    """All 1,623 characters x 20 drawings, preprocessed, in the reference order."""

    images: np.ndarray  # uint8, (1623, 20, 28, 28); 1 = background, 0 = stroke (not inverted)
    characters: tuple[str, ...]  # "Alphabet/characterNN"


def load_omniglot(root: Path, *, download: bool = True, progress: bool = False) -> OmniglotImages:
    """Load Omniglot from ``root / "omniglot"`` (archives or extracted folders).

    `root` is the data root (see ``bench.data.root.data_root``). A set found neither as
    archive nor as folder is downloaded when `download` is set. The content is checked
    before use, and the preprocessed array is cached, keyed by the preprocessing and the
    source's content, beside the data when that folder is writable, else in the user
    cache. Raises DataError (one line, naming the file and the fix) for missing or
    corrupt data.
    """
    folder = Path(root) / "omniglot"
    sources = [_locate(folder, name, download, progress) for name in OMNIGLOT_ARCHIVES]
    key = hashlib.sha256(json.dumps([_PREPROCESSING, *map(_fingerprint, sources)]).encode())
    fname = f"omniglot-{IMAGE_SIZE}x{IMAGE_SIZE}-{key.hexdigest()[:16]}.npz"
    user_cache = cache_dir() / "omniglot"
    for place in (folder, user_cache):
        if (cached := _load_cache(place / fname)) is not None:
            return cached
    data = _decode(sources, progress)
    _save_cache(data, (folder if is_writable_dir(folder) else user_cache) / fname)
    return data


def split_characters(
    n_characters: int = 1623, *, seed: int = 0, train: int = 1200, val: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) indices into ``OmniglotImages.characters``.

    The reference shuffles the character list with Python's ``random`` seeded with
    `seed` and meta-trains on the first `train` (PAPERS.md section 4); only the list's
    length matters, so shuffling ``range(n)`` reproduces it. Validation takes the last
    `val` of the meta-training characters, so the test split never depends on `val`.
    """
    if not 0 <= val < train <= n_characters:
        raise ConfigError(
            f"bad Omniglot split: need 0 <= val < train <= {n_characters} characters, got "
            f"train={train}, val={val}; change the preset's train/val character counts"
        )
    order = list(range(n_characters))
    random.Random(seed).shuffle(order)
    order = np.array(order, dtype=np.int64)
    return order[: train - val], order[train - val : train], order[train:]


def augment_rotations(images: np.ndarray) -> np.ndarray:
    """(C, D, H, W) -> (4C, D, H, W): class 4c + k is character c rotated k*90 degrees
    counter-clockwise, the order of the reference's ``augment_dataset`` (PIL's rotate
    is counter-clockwise, as is np.rot90)."""
    rotated = np.stack([np.rot90(images, k, axes=(-2, -1)) for k in range(4)], axis=1)
    return rotated.reshape(-1, *rotated.shape[2:])


# --- finding and downloading the files -------------------------------------------------


def _missing(folder: Path, problem: str) -> DataError:
    """A one-line DataError: what went wrong, then how to provide the archives by hand."""
    return DataError(
        f"{problem}; put images_background.zip and images_evaluation.zip (from {_RELEASE_PAGE}) "
        f"in {folder}, or choose another data root with --data DIR or env BENCH_DATA"
    )


def _locate(folder: Path, name: str, download: bool, progress: bool) -> Path:
    """The archive of set `name` if present, else its extracted folder, else a download."""
    archive, extracted = folder / f"{name}.zip", folder / name
    if archive.is_file():
        return archive
    if extracted.is_dir():
        return extracted
    if not download:
        raise _missing(folder, f"Omniglot's {name}.zip is missing and download is off")
    _fetch(name, folder, progress)
    return archive


def _fetch(name: str, folder: Path, progress: bool) -> None:
    """Download the official archive of set `name` into `folder`, with one-line errors."""
    url, md5 = OMNIGLOT_ARCHIVES[name]
    # Check the folder first: as root, mkdir would succeed even in a read-only copy.
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not is_writable_dir(existing):
        raise _missing(folder, f"cannot download Omniglot into {existing}: it is not writable")
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _download(url, md5, folder, f"{name}.zip", progress)
    except BaseException as exc:
        for path in created:  # a failed download leaves no folder behind (pooch removes its own file)
            with contextlib.suppress(OSError):
                path.rmdir()
        if isinstance(exc, ValueError):  # pooch's checksum mismatch
            problem = f"the download of {url} is corrupt (MD5 is not {md5}), run again to retry"
            raise _missing(folder, problem) from exc
        if isinstance(exc, OSError):  # includes every requests error
            raise _missing(folder, f"could not download {url} ({_one_line(exc)})") from exc
        raise


def _download(url: str, md5: str, folder: Path, fname: str, progress: bool) -> None:
    """The only network access: fetch `url` to folder/fname, checking its MD5."""
    import pooch  # only needed to download; keeps importing this module cheap

    logger = pooch.get_logger()  # its "Downloading ..." line: the progress bar says as much
    level = logger.level
    logger.setLevel("WARNING")
    try:
        pooch.retrieve(url, known_hash=f"md5:{md5}", path=folder, fname=fname, progressbar=progress)
    finally:
        logger.setLevel(level)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --- the cache ---------------------------------------------------------------------------


def _fingerprint(source: Path) -> str:
    """sha256 of an archive's bytes; for an extracted folder, of its files' paths and sizes."""
    if source.is_file():
        return hashlib.sha256(source.read_bytes()).hexdigest()  # 15 MB in all: one read is fine
    # os.walk rather than pathlib: this runs on every load, over 32,460 files.
    entries = []
    for folder, _, files in os.walk(source):
        relative = os.path.relpath(folder, source)
        entries += (f"{relative}/{f}\0{os.path.getsize(os.path.join(folder, f))}\n" for f in files)
    return hashlib.sha256("".join(sorted(entries)).encode()).hexdigest()


def _load_cache(path: Path) -> OmniglotImages | None:
    """The cached data, or None when the file is absent or unusable (it is then rebuilt)."""
    arrays = load_arrays(path, ("images", "characters"))
    if arrays is None:
        return None
    images, characters = arrays["images"], arrays["characters"]
    shape = (N_CHARACTERS, N_DRAWINGS, IMAGE_SIZE, IMAGE_SIZE)
    if images.dtype != np.uint8 or images.shape != shape or characters.shape != (N_CHARACTERS,):
        return None
    return OmniglotImages(images, tuple(characters.tolist()))


def _save_cache(data: OmniglotImages, path: Path) -> None:
    # Compressed: the binary images shrink from 25 MB to about 1 MB.
    save_arrays(path, {"images": data.images, "characters": np.array(data.characters)}, "Omniglot")


# --- reading and preprocessing -----------------------------------------------------------


@contextlib.contextmanager
def _open_source(source: Path) -> Iterator[tuple[list[str], Callable[[str], bytes]]]:
    """The member paths (``<set>/<alphabet>/<character>/<file>``) and a reader, for an
    archive (read in place, never extracted) or an extracted folder."""
    if source.is_file():
        with zipfile.ZipFile(source) as archive:
            yield archive.namelist(), archive.read
    else:
        base = source.parent
        members = [p.relative_to(base).as_posix() for p in source.rglob("*.png")]
        yield members, lambda member: (base / member).read_bytes()


def _group_characters(name: str, members: list[str]) -> dict[tuple[str, str], list[str]]:
    """PNG members grouped by (alphabet, character), all sorted by name.
    Like the reference, only ``character*`` folders count; other entries are ignored."""
    groups = defaultdict(list)
    for member in members:
        parts = member.split("/")
        if (
            len(parts) == 4 and parts[0] == name and parts[2].startswith("character")
            and parts[3].endswith(".png") and not parts[3].startswith(".")
        ):
            groups[parts[1], parts[2]].append(member)
    return {key: sorted(files) for key, files in sorted(groups.items())}


def _escapes(member: str) -> bool:
    """True for an archive entry whose path would land outside the folder it is
    extracted into: absolute, with a drive letter, or climbing out with '..'."""
    path = member.replace("\\", "/")
    return path.startswith("/") or re.match(r"[A-Za-z]:", path) is not None or ".." in path.split("/")


def preprocess(png: bytes) -> np.ndarray:
    """The reference's ``np.array(Image.open(f).resize((28, 28)))``: Pillow resamples a
    1-bit image with nearest neighbour whatever the filter, giving bool, True = background."""
    with Image.open(io.BytesIO(png)) as image:
        if image.size != SOURCE_SIZE or image.mode != "1":
            width, height = image.size
            raise ValueError(f"image is {image.mode} {width}x{height}, not 1-bit 105x105")
        return np.array(image.resize((IMAGE_SIZE, IMAGE_SIZE)))


def _decode_source(source: Path, bar: tqdm) -> dict[tuple[str, str], np.ndarray]:
    """Check one set's content and decode it: (alphabet, character) -> (20, 28, 28) uint8."""
    name = source.name.removesuffix(".zip")
    fix = f"re-download it or replace it with the official {name}.zip from {_RELEASE_PAGE}"
    member = ""
    try:
        with _open_source(source) as (members, read):
            if escaping := next((m for m in members if _escapes(m)), None):
                raise DataError(f"{source} holds an entry {escaping!r} that points outside the data folder: "
                                f"refused before anything is read or extracted; {fix}")
            groups = _group_characters(name, members)
            n_alphabets, n_characters = _EXPECTED[name]
            found = len({alphabet for alphabet, _ in groups})
            if (found, len(groups)) != (n_alphabets, n_characters):
                raise DataError(
                    f"{source} holds {found} alphabets and {len(groups)} characters, expected "
                    f"{n_alphabets} and {n_characters}; {fix}"
                )
            for (alphabet, character), files in groups.items():
                if len(files) != N_DRAWINGS:
                    raise DataError(
                        f"{source}: {alphabet}/{character} has {len(files)} drawings, expected "
                        f"{N_DRAWINGS}; {fix}"
                    )
            decoded = {}
            for key, files in groups.items():
                block = np.empty((N_DRAWINGS, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
                for i, member in enumerate(files):
                    block[i] = preprocess(read(member))
                    bar.update()
                decoded[key] = block
            return decoded
    except _READ_ERRORS as exc:
        at = f" at {member}" if member else ""
        raise DataError(f"{source} is unreadable or corrupt{at} ({_one_line(exc)}); {fix}") from exc


def _decode(sources: list[Path], progress: bool) -> OmniglotImages:
    """Decode both sets and pool them in the reference order: alphabets of both sets
    sorted by name, then characters by name (PAPERS.md section 4)."""
    total = N_CHARACTERS * N_DRAWINGS
    with tqdm(total=total, desc="decoding Omniglot", unit="img", disable=not progress) as bar:
        pooled = {}
        for source in sources:
            pooled.update(_decode_source(source, bar))
    # Both sets passed their own counts, so fewer alphabets means they share names.
    if len({alphabet for alphabet, _ in pooled}) != _N_ALPHABETS:
        raise DataError(
            f"{' and '.join(map(str, sources))} share alphabet names; "
            f"replace them with the official archives from {_RELEASE_PAGE}"
        )
    keys = sorted(pooled)
    return OmniglotImages(
        images=np.stack([pooled[key] for key in keys]),
        characters=tuple(f"{alphabet}/{character}" for alphabet, character in keys),
    )
