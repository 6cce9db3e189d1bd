"""Tests of the Mini-ImageNet loader (bench.data.miniimagenet).

There is no real Mini-ImageNet here: each test builds a tiny copy (64/16/20 classes of
3 random images, or fewer where a test says) in either distribution's layout.
BENCH_CACHE points into a temporary folder for the whole module, so nothing is written
to the real user cache.
"""

from __future__ import annotations

import csv
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data import miniimagenet
from bench.data.miniimagenet import SCALE, MiniImageNetImages, load_miniimagenet
from bench.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
COUNTS = {"train": 64, "val": 16, "test": 20}
PER_CLASS = 3


pytestmark = pytest.mark.usefixtures("user_cache")  # conftest: a user cache of the module's own


@pytest.fixture(scope="module")
def source():
    """wnids per split (in a shuffled, unsorted order) and their images: wnid -> uint8
    (PER_CLASS, 84, 84, 3), channels last as stored, in the source's order."""
    rng = np.random.default_rng(0)
    wnids = [f"n{n:08d}" for n in rng.choice(10**8, size=100, replace=False)]
    starts = {"train": 0, "val": 64, "test": 80}
    names = {split: wnids[starts[split] : starts[split] + COUNTS[split]] for split in SPLITS}
    images = {w: rng.integers(0, 256, (PER_CLASS, 84, 84, 3), dtype=np.uint8) for w in wnids}
    return names, images


def _expected(source, split: str) -> tuple[tuple[str, ...], np.ndarray]:
    names, images = source
    order = tuple(sorted(names[split]))
    return order, np.stack([images[w] for w in order]).transpose(0, 1, 4, 2, 3)


def _one_line_naming(error: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)
    return message


# --- the pickled layout --------------------------------------------------------------


def _pickle_content(source, split: str, *, per_class: int = PER_CLASS, indices=list) -> dict:
    """The content of one split's pickle, rows shuffled: class_dict lists them in the
    class's image order, its keys are in the source's (unsorted) order."""
    names, images = source
    wnids = names[split]
    rows = np.random.default_rng(len(wnids)).permutation(len(wnids) * per_class)
    data = np.empty((len(rows), 84, 84, 3), np.uint8)
    class_dict = {}
    for c, wnid in enumerate(wnids):
        mine = rows[c * per_class : (c + 1) * per_class]
        data[mine] = images[wnid][:per_class]
        class_dict[wnid] = indices(int(r) for r in mine)
    return {"image_data": data, "class_dict": class_dict}


def _write_pickles(folder: Path, source, **edits) -> Path:
    """The three pickles, one per protocol family (2 stores bytes through _codecs.encode,
    4 is numpy's usual _reconstruct, 5 its _frombuffer); np.int64 indices for val, an
    array for test. `edits`: split -> content (any object) that replaces that split's."""
    folder.mkdir(parents=True, exist_ok=True)
    layout = {
        "train": (5, list),
        "val": (2, lambda rows: [np.int64(r) for r in rows]),
        "test": (4, lambda rows: np.fromiter(rows, np.int64)),
    }
    for split, (protocol, indices) in layout.items():
        content = edits[split] if split in edits else None
        content = _pickle_content(source, split, indices=indices) if content is None else content
        with open(folder / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump(content, f, protocol=protocol)
    return folder


def _assert_matches(data: MiniImageNetImages, source) -> None:
    assert isinstance(data, MiniImageNetImages)
    assert set(data.splits) == set(data.classes) == set(SPLITS)
    for split in SPLITS:
        order, pixels = _expected(source, split)
        assert data.classes[split] == order
        assert data.splits[split].dtype == np.uint8
        assert data.splits[split].shape == (COUNTS[split], PER_CLASS, 3, 84, 84)
        assert np.array_equal(data.splits[split], pixels)


def test_pickles_load_in_order(tmp_path, source, user_cache):
    folder = _write_pickles(tmp_path / "miniimagenet", source)
    data = load_miniimagenet(tmp_path, images_per_class=PER_CLASS, progress=True)
    _assert_matches(data, source)
    assert data.classes["train"] != tuple(source[0]["train"])  # the source order was not sorted
    # Reading the pickles is faster than reading a compressed cache: none is written.
    assert not list(folder.glob("*.npz")) and not list(folder.glob("*.tmp"))
    assert not (user_cache / "miniimagenet").exists()


@pytest.mark.parametrize("protocol", [0, 2])
def test_pickles_written_by_numpy_1(tmp_path, source, protocol):
    """The widespread pickles predate numpy 2, whose arrays pickle under numpy._core:
    numpy 1 named the same functions under numpy.core."""
    folder = _write_pickles(tmp_path / "miniimagenet", source)
    path = folder / "mini-imagenet-cache-val.pkl"
    raw = pickle.dumps(_pickle_content(source, "val"), protocol=protocol)
    assert b"numpy._core.multiarray\n_reconstruct" in raw  # GLOBAL opcodes: plain text
    path.write_bytes(raw.replace(b"numpy._core.", b"numpy.core."))
    _assert_matches(load_miniimagenet(tmp_path, images_per_class=PER_CLASS), source)


def test_scale():
    assert SCALE == 1 / 255 and 255 * SCALE == 1.0


def test_pickles_preferred_over_csv(tmp_path, source):
    folder = _write_pickles(tmp_path / "miniimagenet", source)
    for split in SPLITS:
        (folder / f"{split}.csv").write_text("filename,label\n")  # would fail if read
    (folder / "images").mkdir()
    _assert_matches(load_miniimagenet(tmp_path, images_per_class=PER_CLASS), source)


class _Payload:
    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("where", ["top", "nested"])
def test_malicious_pickle_is_refused(tmp_path, source, protocol, where):
    folder = _write_pickles(tmp_path / "miniimagenet", source)
    marker = tmp_path / "pwned"
    payload = _Payload(os.system, f"touch {marker}")
    content = payload if where == "top" else _pickle_content(source, "val")
    if where == "nested":
        content["class_dict"]["n99999999"] = [payload]
    path = folder / "mini-imagenet-cache-val.pkl"
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    with pytest.raises(DataError) as error:
        load_miniimagenet(tmp_path, images_per_class=PER_CLASS)
    refused = f"'{os.system.__module__}.system'"  # 'posix.system' on Linux
    message = _one_line_naming(error, str(path), refused, "refused", "clean copy")
    assert "not plain data" in message
    assert not marker.exists()


def test_refuses_other_callables(tmp_path, source):
    folder = _write_pickles(tmp_path / "miniimagenet", source)
    path = folder / "mini-imagenet-cache-test.pkl"
    path.write_bytes(pickle.dumps({"image_data": _Payload(eval, "1 + 1")}))
    with pytest.raises(DataError) as error:
        load_miniimagenet(tmp_path, images_per_class=PER_CLASS)
    _one_line_naming(error, str(path), "'builtins.eval'")


def test_html_page_saved_as_pickle(tmp_path, source):
    folder = _write_pickles(tmp_path / "miniimagenet", source)
    path = folder / "mini-imagenet-cache-train.pkl"
    path.write_text("\n<!DOCTYPE html>\n<html><head><title>Google Drive - Virus scan warning")
    with pytest.raises(DataError) as error:
        load_miniimagenet(tmp_path, images_per_class=PER_CLASS)
    _one_line_naming(error, str(path), "HTML", "not a pickle", "download")


def test_truncated_pickle(tmp_path, source):
    folder = _write_pickles(tmp_path / "miniimagenet", source)
    path = folder / "mini-imagenet-cache-test.pkl"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError) as error:
        load_miniimagenet(tmp_path, images_per_class=PER_CLASS)
    _one_line_naming(error, str(path), "truncated", "download it again")


@pytest.mark.parametrize("content", [b"", b"\x80\x04\x95"], ids=["empty", "header-only"])
def test_empty_or_cut_pickle(tmp_path, source, content):
    folder = _write_pickles(tmp_path / "miniimagenet", source)
    path = folder / "mini-imagenet-cache-val.pkl"
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        load_miniimagenet(tmp_path, images_per_class=PER_CLASS)
    _one_line_naming(error, str(path), "truncated")


def test_not_a_pickle(tmp_path, source):
    folder = _write_pickles(tmp_path / "miniimagenet", source)
    path = folder / "mini-imagenet-cache-val.pkl"
    noise = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path.write_bytes(b"PK\x03\x04" + noise)  # e.g. a zip archive saved under the name
    with pytest.raises(DataError) as error:
        load_miniimagenet(tmp_path, images_per_class=PER_CLASS)
    _one_line_naming(error, str(path), "not a pickle")


def _edit(source, split: str, change):
    content = _pickle_content(source, split)
    change(content)
    return content


def _set(key, value):
    return lambda content: content.__setitem__(key, value)


def _first_class(change):
    def edit(content):
        wnid = next(iter(content["class_dict"]))
        content["class_dict"][wnid] = change(content["class_dict"][wnid])
    return edit


def _class_rows(change):
    """An edit of the val pickle: `change` applied to its first class's row indices."""
    return lambda s: _edit(s, "val", _first_class(change))


def _images(value):
    """An edit of the test pickle: image_data replaced by `value`."""
    return lambda s: _edit(s, "test", _set("image_data", value))


@pytest.mark.parametrize(
    "split, edit, expected",
    [
        pytest.param(
            "train", lambda s: [1, 2, 3],
            r"holds a list, expected a dict with keys 'image_data' and 'class_dict'", id="list",
        ),
        pytest.param(
            "val", lambda s: {"data": 1, "labels": 2},
            r"holds a dict with keys \['data', 'labels'\], expected", id="foreign-keys",
        ),
        pytest.param(
            "val", lambda s: _edit(s, "val", lambda c: c.pop("class_dict")),
            "expected a dict with keys", id="no-class-dict",
        ),
        pytest.param(
            "test", _images(np.zeros((60, 84, 84, 3), np.float32)),
            r"image_data is float32 \(60, 84, 84, 3\), expected uint8 \(N, 84, 84, 3\)",
            id="float-images",
        ),
        pytest.param(
            "test", _images(np.zeros((60, 3, 84, 84), np.uint8)),
            r"image_data is uint8 \(60, 3, 84, 84\), expected uint8 \(N, 84, 84, 3\)",
            id="channels-first",
        ),
        pytest.param("test", _images([[0]]), "image_data is list, expected", id="images-not-array"),
        pytest.param(
            "val", lambda s: _edit(s, "val", _set("class_dict", [1, 2])),
            "class_dict is list, expected a dict", id="class-dict-list",
        ),
        pytest.param(
            "test", lambda s: _edit(s, "test", lambda c: c["class_dict"].__setitem__(2, [0, 1, 2])),
            "non-str keys", id="int-class-name",
        ),
        pytest.param(
            "val", lambda s: _edit(s, "val", lambda c: c["class_dict"].popitem()),
            "has 15 classes, expected 16 for the val split", id="too-few-classes",
        ),
        pytest.param(
            "val", _class_rows(lambda rows: [*rows[:-1], 48]),
            "names row 48, out of range for the 48 images in image_data", id="index-too-large",
        ),
        pytest.param(
            "val", _class_rows(lambda rows: [*rows[:-1], -1]), "names row -1", id="index-negative"
        ),
        pytest.param(
            "val", _class_rows(lambda rows: rows[:2]),
            r"class n\d{8} has 2 images, expected 3 \(images_per_class\)", id="too-few-images",
        ),
        pytest.param(
            "val", _class_rows(lambda rows: [*rows[:2], 0.5]),
            "not a flat list of integer row indices", id="float-index",
        ),
        pytest.param(
            "val", _class_rows(lambda rows: "abc"), "is a str, not a list", id="index-not-list"
        ),
        pytest.param(
            "val", _class_rows(lambda rows: [rows[0]] * 3), "more than once", id="repeated-row"
        ),
    ],
)
def test_pickle_content_errors(tmp_path, source, split, edit, expected):
    folder = _write_pickles(tmp_path / "miniimagenet", source, **{split: edit(source)})
    path = folder / f"mini-imagenet-cache-{split}.pkl"
    with pytest.raises(DataError, match=expected) as error:
        load_miniimagenet(tmp_path, images_per_class=PER_CLASS)
    _one_line_naming(error, str(path))


def test_pickle_images_per_class_mismatch(tmp_path, source):
    _write_pickles(tmp_path / "miniimagenet", source)
    with pytest.raises(DataError, match=r"train\.pkl: class n\d{8} has 3 images, expected 600"):
        load_miniimagenet(tmp_path)  # the default: the real data's 600


def test_pickles_share_a_class(tmp_path, source):
    names, _ = source
    val = _pickle_content(source, "val")
    shared = names["train"][5]
    val["class_dict"][shared] = val["class_dict"].pop(names["val"][0])
    folder = _write_pickles(tmp_path / "miniimagenet", source, val=val)
    with pytest.raises(DataError, match=f"share classes {shared}") as error:
        load_miniimagenet(tmp_path, images_per_class=PER_CLASS)
    _one_line_naming(
        error, str(folder / "mini-imagenet-cache-train.pkl"), "mini-imagenet-cache-val.pkl"
    )


def test_missing_pickle(tmp_path, source):
    folder = _write_pickles(tmp_path / "miniimagenet", source)
    (folder / "mini-imagenet-cache-test.pkl").unlink()
    with pytest.raises(DataError) as error:
        load_miniimagenet(tmp_path, images_per_class=PER_CLASS)
    message = _one_line_naming(
        error, "mini-imagenet-cache-test.pkl", str(folder), "missing", "--data DIR"
    )
    assert "train.pkl" not in message


# --- the CSV layout ------------------------------------------------------------------

ODD = ("val", 2, 1)  # (split, class in sorted order, image): a 100x90 image, resized
JPEG = ("test", 0, 2)  # a smooth JPEG: lossy, compared with an independent decode


def _smooth() -> np.ndarray:
    """What the JPEG holds: gradients, which JPEG keeps to within a few levels."""
    y, x = np.mgrid[0:84, 0:84]
    return np.stack([3 * x, 3 * y, 40 + x + y], axis=-1).astype(np.uint8)


def _write_csv_layout(folder: Path, source, *, per_class: int = PER_CLASS) -> Path:
    """CSVs with the rows of all classes interleaved, PNGs (lossless) named in them,
    one JPEG and one image that is not 84x84. Returns the folder."""
    names, images = source
    (folder / "images").mkdir(parents=True)
    for split in SPLITS:
        order = sorted(names[split])
        rows = []
        for i in range(per_class):
            for wnid in names[split]:
                c = order.index(wnid)
                at = (split, c, i)
                stem = f"{wnid}{i:08d}"
                if at == JPEG:
                    Image.fromarray(_smooth()).save(folder / "images" / f"{stem}.jpg", quality=95)
                    rows.append((f"{stem}.jpg", wnid))
                    continue
                pixels = images[wnid][i]
                if at == ODD:
                    pixels = np.random.default_rng(2).integers(0, 256, (90, 100, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / "images" / f"{stem}.png", compress_level=0)
                rows.append((f"{stem}.png", wnid))
        with open(folder / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("filename", "label"), *rows])
    return folder


@pytest.fixture
def csv_folder(tmp_path, source) -> Path:
    return _write_csv_layout(tmp_path / "miniimagenet", source)


def _check_csv_data(data: MiniImageNetImages, folder: Path, source) -> None:
    names, images = source
    for split in SPLITS:
        order, pixels = _expected(source, split)
        got = data.splits[split]
        assert data.classes[split] == order
        assert got.dtype == np.uint8 and got.shape == (COUNTS[split], PER_CLASS, 3, 84, 84)
        exact = np.ones(got.shape[:2], bool)
        for special in (ODD, JPEG):
            if special[0] == split:
                exact[special[1:]] = False
        assert np.array_equal(got[exact], pixels[exact])
    # The odd-sized image: Pillow's Lanczos resize of the source, to the pixel.
    split, c, i = ODD
    with Image.open(folder / "images" / f"{data.classes[split][c]}{i:08d}.png") as odd:
        assert odd.size == (100, 90)
        resized = np.asarray(odd.convert("RGB").resize((84, 84), Image.LANCZOS))
    assert np.array_equal(data.splits[split][c, i], resized.transpose(2, 0, 1))
    # The JPEG: an independent decode exactly, the original pixels within JPEG's loss.
    split, c, i = JPEG
    wnid = data.classes[split][c]
    with Image.open(folder / "images" / f"{wnid}{i:08d}.jpg") as jpeg:
        decoded = np.asarray(jpeg.convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(data.splits[split][c, i], decoded)
    loss = np.abs(data.splits[split][c, i].astype(int) - _smooth().transpose(2, 0, 1))
    assert loss.mean() < 2 and loss.max() < 20, (loss.mean(), loss.max())


def test_csv_layout_loads_and_caches(csv_folder, source, monkeypatch, user_cache):
    root = csv_folder.parent
    decoded = []
    real_read = miniimagenet._read_image

    def counting_read(path):
        decoded.append(path)
        return real_read(path)

    monkeypatch.setattr(miniimagenet, "_read_image", counting_read)
    data = load_miniimagenet(root, images_per_class=PER_CLASS)
    _check_csv_data(data, csv_folder, source)
    assert len(decoded) == 100 * PER_CLASS
    # Cached beside the data (the folder is writable), atomically, and readable by others.
    (cache,) = csv_folder.glob("*.npz")
    assert not list(csv_folder.glob("*.tmp")) and not (user_cache / "miniimagenet").exists()
    assert cache.stat().st_mode & 0o044 == 0o044

    # The second load reads the cache and never the images.
    def fail(path):
        pytest.fail(f"decoded {path} although the cache is there")

    monkeypatch.setattr(miniimagenet, "_read_image", fail)
    again = load_miniimagenet(root, images_per_class=PER_CLASS)
    assert again.classes == data.classes
    for split in SPLITS:
        assert np.array_equal(again.splits[split], data.splits[split])

    # A corrupt cache is a miss: decoded again and rewritten.
    cache.write_bytes(cache.read_bytes()[:1000])
    decoded.clear()
    monkeypatch.setattr(miniimagenet, "_read_image", counting_read)
    rebuilt = load_miniimagenet(root, images_per_class=PER_CLASS)
    assert len(decoded) == 100 * PER_CLASS
    _check_csv_data(rebuilt, csv_folder, source)
    assert list(csv_folder.glob("*.npz")) == [cache]
    monkeypatch.setattr(miniimagenet, "_read_image", fail)
    load_miniimagenet(root, images_per_class=PER_CLASS)


def test_foreign_cache_is_a_miss(csv_folder, source):
    root = csv_folder.parent
    load_miniimagenet(root, images_per_class=PER_CLASS)
    (cache,) = csv_folder.glob("*.npz")
    # A well-formed npz under the cache's name, but not this data's: other class names.
    arrays = {s: np.zeros((COUNTS[s], PER_CLASS, 3, 84, 84), np.uint8) for s in SPLITS}
    names = {f"{s}_classes": np.array([f"x{c:08d}" for c in range(COUNTS[s])]) for s in SPLITS}
    np.savez_compressed(cache, **arrays, **names)
    _check_csv_data(load_miniimagenet(root, images_per_class=PER_CLASS), csv_folder, source)


def test_cache_follows_the_sources(csv_folder, source, monkeypatch):
    root = csv_folder.parent
    first = load_miniimagenet(root, images_per_class=PER_CLASS)
    # Replace one image by another of a different size: the fingerprint changes.
    wnid = first.classes["train"][0]
    new = np.full((84, 84, 3), 7, np.uint8)
    Image.fromarray(new).save(csv_folder / "images" / f"{wnid}{0:08d}.png", compress_level=9)
    second = load_miniimagenet(root, images_per_class=PER_CLASS, progress=True)
    assert np.array_equal(second.splits["train"][0, 0], new.transpose(2, 0, 1))
    assert np.array_equal(second.splits["train"][1:], first.splits["train"][1:])
    assert len(list(csv_folder.glob("*.npz"))) == 2


def test_cache_in_user_cache_when_folder_is_read_only(csv_folder, source, tmp_path, monkeypatch):
    fresh = tmp_path / "fresh_cache"
    monkeypatch.setenv("BENCH_CACHE", str(fresh))
    csv_folder.chmod(0o555)
    try:
        data = load_miniimagenet(csv_folder.parent, images_per_class=PER_CLASS)
        assert not list(csv_folder.glob("*.npz"))
        assert len(list((fresh / "miniimagenet").glob("*.npz"))) == 1
        monkeypatch.setattr(miniimagenet, "_read_image", lambda path: pytest.fail("not cached"))
        again = load_miniimagenet(csv_folder.parent, images_per_class=PER_CLASS)
        assert np.array_equal(again.splits["val"], data.splits["val"])
    finally:
        csv_folder.chmod(0o755)


def test_cache_write_failure_only_warns(csv_folder, source, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("BENCH_CACHE", str(blocker / "cache"))  # cannot be created
    csv_folder.chmod(0o555)
    try:
        with pytest.warns(UserWarning, match=r"could not write the Mini-ImageNet cache .*a_file"):
            data = load_miniimagenet(csv_folder.parent, images_per_class=PER_CLASS)
        _check_csv_data(data, csv_folder, source)
    finally:
        csv_folder.chmod(0o755)


def test_csv_header_with_bom_and_blank_lines(csv_folder, source):
    path = csv_folder / "val.csv"
    path.write_text("\ufeff" + path.read_text().replace("\n", "\n\n", 3), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_miniimagenet(csv_folder.parent, images_per_class=PER_CLASS)
    assert data.classes["val"] == _expected(source, "val")[0]


def _rewrite(path: Path, change) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(change(lines)) + "\n")


def test_missing_csv(csv_folder):
    (csv_folder / "val.csv").unlink()
    with pytest.raises(DataError) as error:
        load_miniimagenet(csv_folder.parent, images_per_class=PER_CLASS)
    message = _one_line_naming(error, "val.csv", str(csv_folder), "missing", "BENCH_DATA")
    assert "train.csv" not in message


def test_missing_images_folder(tmp_path):
    folder = tmp_path / "miniimagenet"
    folder.mkdir()
    for split in SPLITS:
        (folder / f"{split}.csv").write_text("filename,label\n")
    with pytest.raises(DataError) as error:
        load_miniimagenet(tmp_path)
    _one_line_naming(error, "images/", str(folder), "missing")


def _drop_first_class(lines: list[str]) -> list[str]:
    label = lines[1].split(",")[1]
    return [line for line in lines if not line.endswith("," + label)]


@pytest.mark.parametrize(
    "split, change, expected",
    [
        pytest.param(
            "train", lambda lines: ["file,class", *lines[1:]],
            "starts with 'file,class', expected the header 'filename,label'", id="header",
        ),
        pytest.param(
            "train", lambda lines: [], "starts with '', expected the header 'filename,label'",
            id="empty",
        ),
        pytest.param(
            "val", lambda lines: [*lines, "extra.png,n1,3"],
            "line 50 is 'extra.png,n1,3', not 'filename,label'", id="three-fields",
        ),
        pytest.param(
            "val", lambda lines: [*lines, "../../etc/passwd,n00000001"],
            r"line 50 is '\.\./\.\./etc/passwd", id="outside-images",
        ),
        pytest.param(
            "test", lambda lines: lines[:-1],
            r"class n\d{8} has 2 images, expected 3 \(images_per_class\)", id="too-few-images",
        ),
        pytest.param(
            "test", _drop_first_class, "has 19 classes, expected 20 for the test split",
            id="too-few-classes",
        ),
        pytest.param(
            "val", lambda lines: [*lines, lines[1].replace(",n", "x,n")],
            "has 4 images, expected 3",
            id="too-many-images",
        ),
    ],
)
def test_csv_content_errors(csv_folder, split, change, expected):
    path = csv_folder / f"{split}.csv"
    _rewrite(path, change)
    with pytest.raises(DataError, match=expected) as error:
        load_miniimagenet(csv_folder.parent, images_per_class=PER_CLASS)
    _one_line_naming(error, str(path))


def test_csv_lists_an_image_twice(csv_folder):
    train = (csv_folder / "train.csv").read_text().splitlines()
    first = train[1].split(",")[0]
    last_label = (csv_folder / "test.csv").read_text().splitlines()[-1].split(",")[1]
    _rewrite(csv_folder / "test.csv", lambda lines: [*lines[:-1], f"{first},{last_label}"])
    expected = rf"test\.csv line 61 lists {first} again \(first at train\.csv line 2\)"
    with pytest.raises(DataError, match=expected) as error:
        load_miniimagenet(csv_folder.parent, images_per_class=PER_CLASS)
    _one_line_naming(error, str(csv_folder / "test.csv"))


def test_csv_splits_share_a_class(csv_folder, source):
    names, _ = source
    val, test = names["val"][0], names["test"][3]
    _rewrite(csv_folder / "test.csv", lambda lines: [line.replace(test, val) for line in lines])
    with pytest.raises(DataError, match=f"share classes {val}") as error:
        load_miniimagenet(csv_folder.parent, images_per_class=PER_CLASS)
    _one_line_naming(error, str(csv_folder / "val.csv"), str(csv_folder / "test.csv"))


def test_missing_image_file(csv_folder):
    name = (csv_folder / "val.csv").read_text().splitlines()[7].split(",")[0]
    (csv_folder / "images" / name).unlink()
    with pytest.raises(DataError) as error:
        load_miniimagenet(csv_folder.parent, images_per_class=PER_CLASS)
    _one_line_naming(error, str(csv_folder / "images" / name), "val.csv line 8", "missing")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_image_file(csv_folder, damage):
    name = (csv_folder / "test.csv").read_text().splitlines()[30].split(",")[0]
    path = csv_folder / "images" / name
    if damage == "garbage":
        path.write_bytes(b"<html>not an image</html>")
    else:
        path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DataError) as error:
        load_miniimagenet(csv_folder.parent, images_per_class=PER_CLASS)
    _one_line_naming(error, str(path), "unreadable or corrupt", "clean copy")
    assert not list(csv_folder.glob("*.npz"))


# --- nothing there, bad arguments ------------------------------------------------------


def test_nothing_found(tmp_path):
    with pytest.raises(DataError) as error:
        load_miniimagenet(tmp_path)
    parts = (
        "mini-imagenet-cache-train.pkl", "mini-imagenet-cache-val.pkl",
        "mini-imagenet-cache-test.pkl",
        "train.csv", "val.csv", "test.csv", "images/", str(tmp_path / "miniimagenet"),
        "--data DIR", "BENCH_DATA",
    )
    _one_line_naming(error, *parts)
    assert not (tmp_path / "miniimagenet").exists()


def test_images_per_class_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="images_per_class"):
        load_miniimagenet(tmp_path, images_per_class=0)
