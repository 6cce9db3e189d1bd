"""Mini-ImageNet, read from either of its two common distributions (PAPERS.md section 4).

64/16/20 classes for meta-training, validation and test, 600 images each, 84x84 RGB;
the models see the pixels scaled to [0, 1] (``SCALE``). There is no public stable URL,
so nothing is downloaded: the files are put in ``<data root>/miniimagenet`` by hand, in
either layout (auto-detected; the pickles win when both are there):

1. The pickled caches: ``mini-imagenet-cache-{train,val,test}.pkl``, each a dict
   ``{"image_data": uint8 (N, 84, 84, 3), "class_dict": {wnid: [row indices]}}``.
   Pickles run code when loaded, so these are read with an unpickler that admits only
   numpy arrays and plain values, and refuses anything else before it can run.
2. Ravi & Larochelle's split: ``train.csv``, ``val.csv``, ``test.csv`` (header
   ``filename,label``, the label being the wnid) and an ``images/`` folder holding the
   files they name; each image is converted to RGB and, if it is not 84x84 already,
   resized with Lanczos.

Within each split the classes are sorted by wnid; the images of a class keep their
order in the source (the class_dict list, or the CSV file). Decoding the CSV layout's
60,000 images is the slow step, so its result is cached (keyed by the preprocessing and
the source files); the pickles are not cached, as reading them is already faster than
reading a compressed cache (0.2 s against 0.8 s for 200 MB, measured) and a cache would
double the disk they take.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import os
import pickle
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from bench.data.omniglot import _READ_ERRORS, _one_line
from bench.data.root import cache_dir, is_writable_dir, load_arrays, save_arrays
from bench.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
N_CLASSES = {"train": 64, "val": 16, "test": 20}
IMAGES_PER_CLASS = 600
IMAGE_SIZE = 84
SCALE = 1 / 255  # multiply the uint8 pixels by this to get the [0, 1] floats the models see

PICKLES = {split: f"mini-imagenet-cache-{split}.pkl" for split in SPLITS}
CSVS = {split: f"{split}.csv" for split in SPLITS}
_IMAGES = "images"
_HEADER = ["filename", "label"]
# Part of the cache key: change the version whenever the preprocessing changes.
_PREPROCESSING = f"miniimagenet-v1-{IMAGE_SIZE}x{IMAGE_SIZE}-rgb-lanczos"


@dataclass(frozen=True)
class MiniImageNetImages:
    """The three splits, each in class order (sorted by wnid)."""

    splits: dict[str, np.ndarray]  # split -> uint8 (classes, images_per_class, 3, 84, 84)
    classes: dict[str, tuple[str, ...]]  # split -> wnids, sorted; row c of the array is class c


def load_miniimagenet(
    root: Path, *, images_per_class: int = IMAGES_PER_CLASS, progress: bool = False
) -> MiniImageNetImages:
    """Load Mini-ImageNet from ``root / "miniimagenet"`` (pickles, else CSVs and images).

    `root` is the data root (see ``bench.data.root.data_root``). Every class must hold
    exactly `images_per_class` images (600 in the real data) and each split its 64/16/20
    classes, with no class in two splits. The CSV layout's decoded images are cached
    beside the data when that folder is writable, else in the user cache. Raises
    DataError (one line, naming the file and the fix) for missing or corrupt data.
    """
    if images_per_class < 1:
        raise ConfigError(f"images_per_class must be at least 1, got {images_per_class}")
    folder = Path(root) / "miniimagenet"
    pickles = {split: folder / name for split, name in PICKLES.items()}
    csvs = {split: folder / name for split, name in CSVS.items()}
    if all(path.is_file() for path in pickles.values()):
        return _load_pickles(pickles, images_per_class, progress)
    if all(path.is_file() for path in csvs.values()) and (folder / _IMAGES).is_dir():
        return _load_csv_layout(folder, csvs, images_per_class, progress)
    raise _missing(folder, _what_is_missing(folder, pickles, csvs))


# --- finding the files ---------------------------------------------------------------


def _missing(folder: Path, problem: str) -> DataError:
    """A one-line DataError: what went wrong, then where the files go."""
    return DataError(
        f"{problem}; put the Mini-ImageNet files in {folder}, or choose another data root "
        f"with --data DIR or env BENCH_DATA"
    )


def _what_is_missing(folder: Path, pickles: dict[str, Path], csvs: dict[str, Path]) -> str:
    """Which files are missing, for the layout the folder seems to hold (or both)."""
    def absent(names: list[str], layout: str) -> str:
        verb = "is" if len(names) == 1 else "are"
        return f"Mini-ImageNet's {' and '.join(names)} {verb} missing ({layout})"

    if any(path.is_file() for path in pickles.values()):
        names = [path.name for path in pickles.values() if not path.is_file()]
        return absent(names, "the pickled layout")
    if any(path.is_file() for path in csvs.values()):
        names = [path.name for path in csvs.values() if not path.is_file()]
        if not (folder / _IMAGES).is_dir():
            names.append(f"the {_IMAGES}/ folder")
        return absent(names, "the CSV layout: Ravi & Larochelle's split")
    return (
        f"no Mini-ImageNet found: expected either {', '.join(PICKLES.values())} "
        f"(the pickled caches), or {', '.join(CSVS.values())} and an {_IMAGES}/ folder "
        f"holding the images they name (Ravi & Larochelle's split)"
    )


# --- the pickled layout --------------------------------------------------------------


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as pickles of protocols 0-2 use it (to store bytes), and no more."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The only globals a pickle may name: what numpy arrays, dtypes and scalars need,
    under the module names of numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``).
    The functions are taken from numpy's own reductions, so no deprecated module is touched."""
    reconstruct = np.ndarray((0,), np.uint8).__reduce__()[0]
    frombuffer = np.arange(1).__reduce_ex__(5)[0]
    scalar = np.int64(0).__reduce__()[0]
    admitted: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        admitted[f"{core}.multiarray", "_reconstruct"] = reconstruct
        admitted[f"{core}.multiarray", "scalar"] = scalar
        admitted[f"{core}.numeric", "_frombuffer"] = frombuffer
    return admitted


_ADMITTED = _numpy_globals()


class _PlainDataUnpickler(pickle.Unpickler):
    """An unpickler that builds only numpy arrays and plain values (dicts, lists, tuples,
    str, numbers, None: these need no global). Any other global (a function or class that
    could run code) is refused when named, before anything calls it."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")  # latin1: numpy's advice for Python 2 pickles
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in _ADMITTED:
            return _ADMITTED[module, name]
        raise DataError(
            f"{self.path} holds a pickled {f'{module}.{name}'!r}, which is not plain data: "
            f"refused (only arrays, lists and dicts of plain values are loaded); "
            f"replace it with a clean copy"
        )


def _read_pickle(path: Path) -> object:
    """Unpickle `path` with the restricted unpickler; one-line DataErrors for a download
    page saved under the file's name, a truncated file, or anything else that is no pickle."""
    fix = "download it again or replace it with a clean copy"
    try:
        with open(path, "rb") as f:
            head = f.read(512)
            if head.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"<"):
                raise DataError(
                    f"{path} is an HTML or XML page, not a pickle (a download page saved under the "
                    f"file's name?); download the file itself again"
                )
            f.seek(0)
            return _PlainDataUnpickler(f, path).load()
    except DataError:
        raise
    except EOFError as exc:
        raise DataError(f"{path} is truncated ({_one_line(exc)}); {fix}") from exc
    except pickle.UnpicklingError as exc:
        if "truncated" in str(exc):
            raise DataError(f"{path} is truncated ({_one_line(exc)}); {fix}") from exc
        raise DataError(f"{path} is not a pickle or is corrupt ({_one_line(exc)}); {fix}") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path} ({_one_line(exc)}); {fix}") from exc
    except Exception as exc:  # corrupt opcodes can fail in numpy or pickle in many ways
        raise DataError(f"{path} is corrupt ({_one_line(exc)}); {fix}") from exc


def _indices(
    path: Path, wnid: str, rows: object, n_images: int, images_per_class: int
) -> np.ndarray:
    """The checked row indices of one class of a pickle's class_dict."""
    fix = "replace it with a clean copy"
    flat = f"{path}: class_dict[{wnid!r}] is not a flat list of integer row indices; {fix}"
    if not isinstance(rows, (list, tuple, np.ndarray)):
        raise DataError(
            f"{path}: class_dict[{wnid!r}] is a {type(rows).__name__}, not a list of row indices; "
            f"{fix}"
        )
    try:
        index = np.asarray(rows)
    except ValueError as exc:  # ragged nesting
        raise DataError(flat) from exc
    if index.ndim != 1 or (index.size and index.dtype.kind not in "iu"):
        raise DataError(flat)
    if index.size != images_per_class:
        raise DataError(
            f"{path}: class {wnid} has {index.size} images, expected {images_per_class} "
            f"(images_per_class); {fix}"
        )
    if index.min() < 0 or index.max() >= n_images:
        bad = index[(index < 0) | (index >= n_images)][0]
        raise DataError(
            f"{path}: class {wnid} names row {bad}, out of range for the {n_images} images in "
            f"image_data; {fix}"
        )
    return index.astype(np.intp, copy=False)


def _pickled_split(
    path: Path, split: str, images_per_class: int
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Read and check one split's pickle: (classes, images_per_class, 3, 84, 84) and wnids."""
    fix = "replace it with a clean copy"
    content = _read_pickle(path)
    if not isinstance(content, dict) or not {"image_data", "class_dict"} <= content.keys():
        found = (
            f"a dict with keys {sorted(map(str, content))}" if isinstance(content, dict)
            else f"a {type(content).__name__}"
        )
        raise DataError(
            f"{path} holds {found}, expected a dict with keys 'image_data' and 'class_dict'; {fix}"
        )
    images, class_dict = content["image_data"], content["class_dict"]
    del content
    shape = (IMAGE_SIZE, IMAGE_SIZE, 3)
    if not isinstance(images, np.ndarray):
        raise DataError(
            f"{path}: image_data is {type(images).__name__}, expected uint8 (N, 84, 84, 3); {fix}"
        )
    if images.dtype != np.uint8 or images.shape[1:] != shape:
        found = f"{images.dtype} {images.shape}"
        raise DataError(f"{path}: image_data is {found}, expected uint8 (N, 84, 84, 3); {fix}")
    if not isinstance(class_dict, dict) or not all(isinstance(k, str) for k in class_dict):
        found = type(class_dict).__name__
        found = "a dict with non-str keys" if found == "dict" else found
        raise DataError(
            f"{path}: class_dict is {found}, expected a dict from class names to row indices; {fix}"
        )
    _check_class_count(path, split, len(class_dict), fix)
    wnids = tuple(sorted(class_dict))
    n_images = len(images)
    index = np.stack([_indices(path, w, class_dict[w], n_images, images_per_class) for w in wnids])
    if len(np.unique(index)) != index.size:
        raise DataError(f"{path}: class_dict names some rows of image_data more than once; {fix}")
    out = np.empty((len(wnids), images_per_class, 3, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for c, rows in enumerate(index):  # one class at a time: a 12.7 MB temporary, not a split's copy
        out[c] = images[rows].transpose(0, 3, 1, 2)
    return out, wnids


def _check_class_count(path: Path, split: str, found: int, fix: str) -> None:
    if found != N_CLASSES[split]:
        raise DataError(
            f"{path} has {found} classes, expected {N_CLASSES[split]} for the {split} split; {fix}"
        )


def _load_pickles(
    paths: dict[str, Path], images_per_class: int, progress: bool
) -> MiniImageNetImages:
    splits, classes = {}, {}
    bar = tqdm(total=len(paths), desc="reading Mini-ImageNet", unit="file", disable=not progress)
    with bar:
        for split, path in paths.items():
            splits[split], classes[split] = _pickled_split(path, split, images_per_class)
            bar.update()
    _check_disjoint(classes, paths)
    return MiniImageNetImages(splits, classes)


def _check_disjoint(classes: dict[str, tuple[str, ...]], paths: dict[str, Path]) -> None:
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            if shared := sorted(set(classes[a]) & set(classes[b])):
                more = f" and {len(shared) - 3} more" if len(shared) > 3 else ""
                raise DataError(
                    f"{paths[a]} and {paths[b]} share classes {', '.join(shared[:3])}{more} "
                    f"(each class belongs to one split); replace them with a clean copy"
                )


# --- the CSV layout ------------------------------------------------------------------


def _read_csv(path: Path, images_per_class: int, split: str) -> dict[str, list[tuple[str, int]]]:
    """wnid -> [(filename, line number)] in file order, classes sorted by wnid; counts checked."""
    fix = f"replace it with Ravi & Larochelle's {path.name}"
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} ({_one_line(exc)}); {fix}") from exc
    if not rows or [field.strip() for field in rows[0]] != _HEADER:
        found = ",".join(rows[0]) if rows else ""
        raise DataError(
            f"{path} starts with {found!r}, expected the header 'filename,label'; {fix}"
        )
    groups: dict[str, list[tuple[str, int]]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        filename, label = (field.strip() for field in row) if len(row) == 2 else ("", "")
        inside = not Path(filename).is_absolute() and ".." not in Path(filename).parts
        if not (filename and label and inside):  # the images must lie in images/
            raise DataError(f"{path} line {line} is {','.join(row)!r}, not 'filename,label'; {fix}")
        groups.setdefault(label, []).append((filename, line))
    _check_class_count(path, split, len(groups), fix)
    for wnid, files in groups.items():
        if len(files) != images_per_class:
            raise DataError(
                f"{path}: class {wnid} has {len(files)} images, expected {images_per_class} "
                f"(images_per_class); {fix}"
            )
    return dict(sorted(groups.items()))


def _load_csv_layout(
    folder: Path, csvs: dict[str, Path], images_per_class: int, progress: bool
) -> MiniImageNetImages:
    listed = {split: _read_csv(path, images_per_class, split) for split, path in csvs.items()}
    _check_disjoint({split: tuple(groups) for split, groups in listed.items()}, csvs)
    key = hashlib.sha256(
        json.dumps([_PREPROCESSING, images_per_class, _fingerprint(folder, csvs, listed)]).encode()
    )
    fname = f"miniimagenet-{IMAGE_SIZE}x{IMAGE_SIZE}-{key.hexdigest()[:16]}.npz"
    user_cache = cache_dir() / "miniimagenet"
    classes = {split: tuple(groups) for split, groups in listed.items()}
    for place in (folder, user_cache):
        if (cached := _load_cache(place / fname, images_per_class, classes)) is not None:
            return cached
    data = _decode(folder, listed, images_per_class, progress)
    _save_cache(data, (folder if is_writable_dir(folder) else user_cache) / fname)
    return data


def _fingerprint(folder: Path, csvs: dict[str, Path], listed: dict) -> str:
    """sha256 of the CSVs' bytes and of the listed images' names and sizes (60,000 stats,
    not 60,000 reads). Names a missing image."""
    digest = hashlib.sha256()
    seen: dict[str, str] = {}
    for split, path in csvs.items():
        digest.update(path.read_bytes())
        for files in listed[split].values():
            for filename, line in files:
                where = f"{path.name} line {line}"
                if filename in seen:
                    raise DataError(
                        f"{path} line {line} lists {filename} again (first at {seen[filename]}); "
                        f"replace it with Ravi & Larochelle's {path.name}"
                    )
                seen[filename] = where
                image = folder / _IMAGES / filename
                try:
                    size = os.stat(image).st_size
                except FileNotFoundError as exc:
                    raise _missing(folder, f"{image}, listed in {where}, is missing") from exc
                except OSError as exc:
                    raise _missing(folder, f"cannot read {image} ({_one_line(exc)})") from exc
                digest.update(f"{filename}\0{size}\n".encode())
    return digest.hexdigest()


def _read_image(path: Path) -> np.ndarray:
    """One image as uint8 (84, 84, 3): converted to RGB, resized with Lanczos if needed."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
        rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)
    return np.asarray(rgb)


def _decode(
    folder: Path, listed: dict, images_per_class: int, progress: bool
) -> MiniImageNetImages:
    """Decode every listed image into preallocated channels-first arrays, on a few threads
    (Pillow releases the GIL while it decodes and resizes)."""
    splits = {
        split: np.empty((len(groups), images_per_class, 3, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        for split, groups in listed.items()
    }
    jobs = [
        (splits[split], c, i, folder / _IMAGES / filename)
        for split, groups in listed.items()
        for c, files in enumerate(groups.values())
        for i, (filename, _) in enumerate(files)
    ]

    def work(chunk: list[tuple[np.ndarray, int, int, Path]]) -> int:
        for out, c, i, path in chunk:
            try:
                out[c, i] = _read_image(path).transpose(2, 0, 1)
            except _READ_ERRORS as exc:
                raise DataError(
                    f"{path} is unreadable or corrupt ({_one_line(exc)}); "
                    f"replace it with a clean copy"
                ) from exc
        return len(chunk)

    _run(work, jobs, progress)
    return MiniImageNetImages(splits, {split: tuple(groups) for split, groups in listed.items()})


def _run(work: Callable[[list], int], jobs: list, progress: bool, chunk: int = 256) -> None:
    """`work` on every chunk of `jobs`, on up to 8 threads; the first error stops the rest."""
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    bar = tqdm(total=len(jobs), desc="decoding Mini-ImageNet", unit="img", disable=not progress)
    try:
        with bar:
            for done in pool.map(work, [jobs[k : k + chunk] for k in range(0, len(jobs), chunk)]):
                bar.update(done)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --- the cache ---------------------------------------------------------------------------


def _load_cache(
    path: Path, images_per_class: int, classes: dict[str, tuple[str, ...]]
) -> MiniImageNetImages | None:
    """The cached data, or None when the file is absent, unusable or not for these
    `classes` (it is then rebuilt)."""
    arrays = load_arrays(path, (*SPLITS, *(f"{split}_classes" for split in SPLITS)))
    if arrays is None:
        return None
    splits = {split: arrays[split] for split in SPLITS}
    cached = {split: tuple(arrays[f"{split}_classes"].tolist()) for split in SPLITS}
    if cached != classes:
        return None
    for split in SPLITS:
        shape = (N_CLASSES[split], images_per_class, 3, IMAGE_SIZE, IMAGE_SIZE)
        if splits[split].dtype != np.uint8 or splits[split].shape != shape:
            return None
    return MiniImageNetImages(splits, classes)


def _save_cache(data: MiniImageNetImages, path: Path) -> None:
    names = {f"{split}_classes": np.array(c) for split, c in data.classes.items()}
    save_arrays(path, {**data.splits, **names}, "Mini-ImageNet")
