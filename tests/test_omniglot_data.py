"""Tests of the Omniglot loader (bench.data.omniglot) and the data/cache folders (bench.data.root).

The tests on the real data decode the full set once per module (`real` fixture) and
once more with one set extracted to a folder; everything else reuses that array, stubs
the decode or fails before decoding.
BENCH_CACHE points into a temporary folder for the whole module, so nothing is written
to the real user cache or to the shared read-only data folder.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data import omniglot
from bench.data.omniglot import augment_rotations, load_omniglot, split_characters
from bench.data.root import cache_dir, data_root, is_writable_dir
from bench.errors import ConfigError, DataError

ARCHIVES = ("images_background.zip", "images_evaluation.zip")


def _real_root() -> Path:
    """BENCH_DATA, else the shared data folder beside the repository."""
    return Path(os.environ.get("BENCH_DATA") or Path(__file__).resolve().parents[2] / "shared/data")


pytestmark = pytest.mark.usefixtures("user_cache")  # conftest: a user cache of the module's own


@pytest.fixture(scope="module")
def real(user_cache):
    """(root, data, seconds) of a cold load of the real data: the one full decode from archives."""
    root = _real_root()
    if not (root / "omniglot" / "images_background.zip").is_file():
        pytest.skip(f"no Omniglot archives in {root / 'omniglot'} (BENCH_DATA sets the data root)")
    start = time.perf_counter()
    data = load_omniglot(root, download=False)
    return root, data, time.perf_counter() - start


def _copy_archives(folder: Path, root: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ARCHIVES:
        shutil.copyfile(root / "omniglot" / name, folder / name)


def _png_members(archive: Path, prefix: str) -> list[str]:
    with zipfile.ZipFile(archive) as z:
        return sorted(n for n in z.namelist() if n.startswith(prefix) and n.endswith(".png"))


# --- the real data --------------------------------------------------------------------


def test_shapes_and_values(real):
    _, data, _ = real
    assert data.images.shape == (1623, 20, 28, 28)
    assert data.images.dtype == np.uint8
    assert set(np.unique(data.images)) == {0, 1}
    assert data.images.mean() > 0.5  # 1 is the background: not inverted
    assert len(data.characters) == len(set(data.characters)) == 1623


def test_reference_order(real):
    root, data, _ = real
    # Independently: the (alphabet, character) folders of both archives, pooled and sorted.
    pairs = set()
    for name in ARCHIVES:
        for member in _png_members(root / "omniglot" / name, ""):
            _, alphabet, character, _ = member.split("/")
            pairs.add((alphabet, character))
    assert len({alphabet for alphabet, _ in pairs}) == 50
    assert data.characters == tuple(f"{a}/{c}" for a, c in sorted(pairs))
    assert data.characters[0] == "Alphabet_of_the_Magi/character01"
    # Background and evaluation alphabets are interleaved: Angelic is an evaluation alphabet.
    assert data.characters[20] == "Angelic/character01"


def test_image_equals_independent_pil_decode(real):
    root, data, _ = real
    c = data.characters.index("ULOG/character26")
    archive = root / "omniglot" / "images_evaluation.zip"
    member = _png_members(archive, "images_evaluation/ULOG/character26/")[7]
    with zipfile.ZipFile(archive) as z:
        image = Image.open(io.BytesIO(z.read(member)))
        image.load()
    assert image.mode == "1" and image.size == (105, 105)
    assert np.array_equal(data.images[c, 7], np.array(image.resize((28, 28))).astype(np.uint8))
    # Pillow resamples 1-bit images with nearest neighbour (PAPERS.md section 4): pixel
    # centre (x + 0.5) * 105 / 28 of the source.
    nearest = ((np.arange(28) + 0.5) * 105 / 28).astype(int)
    assert np.array_equal(data.images[c, 7], np.array(image)[np.ix_(nearest, nearest)])


def test_rotations_of_real_images(real):
    _, data, _ = real
    rotated = augment_rotations(data.images[:3])
    assert rotated.shape == (12, 20, 28, 28) and rotated.dtype == np.uint8
    for c in range(3):
        for k in range(4):
            assert np.array_equal(rotated[4 * c + k], np.rot90(data.images[c], k, axes=(1, 2)))
    # The reference rotates with PIL's Image.rotate(90), counter-clockwise.
    source = Image.fromarray(data.images[1, 0].astype(bool))
    assert np.array_equal(rotated[4 * 1 + 1, 0], np.array(source.rotate(90)).astype(np.uint8))


def test_cache_goes_to_user_cache_and_is_fast(real, user_cache):
    root, data, cold = real
    if is_writable_dir(root / "omniglot"):
        pytest.skip(f"{root / 'omniglot'} is writable, so the cache may already be there")
    cached = list((user_cache / "omniglot").glob("*.npz"))
    assert len(cached) == 1, cached
    assert not [p for p in (root / "omniglot").iterdir() if p.suffix in (".npz", ".tmp")]
    start = time.perf_counter()
    again = load_omniglot(root, download=False)
    warm = time.perf_counter() - start
    assert warm < cold / 3, (warm, cold)
    assert np.array_equal(again.images, data.images) and again.characters == data.characters


def test_writable_copy_caches_beside_archives(real, tmp_path, monkeypatch):
    root, data, _ = real
    folder = tmp_path / "omniglot"
    _copy_archives(folder, root)
    (folder / "images_background").mkdir()  # an extracted folder too: the archive wins
    fresh_cache = tmp_path / "fresh_cache"
    monkeypatch.setenv("BENCH_CACHE", str(fresh_cache))
    decoded = []

    def fake_decode(sources, progress):  # the real decode is tested above; reuse its result
        decoded.append(sources)
        return data

    monkeypatch.setattr(omniglot, "_decode", fake_decode)
    assert load_omniglot(tmp_path, download=False) is data
    assert decoded == [[folder / name for name in ARCHIVES]]
    (beside,) = folder.glob("*.npz")
    assert not fresh_cache.exists()
    assert not list(folder.glob("*.tmp"))
    # Second load: from the cache beside the archives, no decode.
    again = load_omniglot(tmp_path, download=False)
    assert len(decoded) == 1 and np.array_equal(again.images, data.images)
    # A broken cache file is ignored and rewritten.
    beside.write_bytes(b"not an npz")
    assert load_omniglot(tmp_path, download=False) is data
    assert len(decoded) == 2
    assert np.array_equal(load_omniglot(tmp_path, download=False).images, data.images)
    assert len(decoded) == 2


@pytest.mark.parametrize(
    "extracted",
    [
        # One set extracted, the other an archive: the folder path at 40% of the cost.
        ("images_evaluation.zip",),
        pytest.param(ARCHIVES, marks=pytest.mark.slow),  # 32,460 files: 7 to 25 s
    ],
)
def test_extracted_folders_equal_archives(real, tmp_path, monkeypatch, extracted):
    root, data, _ = real
    folder = tmp_path / "omniglot"
    folder.mkdir()
    for name in ARCHIVES:
        if name in extracted:
            with zipfile.ZipFile(root / "omniglot" / name) as z:
                z.extractall(folder)
        else:
            shutil.copyfile(root / "omniglot" / name, folder / name)
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "fresh_cache"))
    try:
        loaded = load_omniglot(tmp_path, download=False)
        assert loaded.characters == data.characters
        assert np.array_equal(loaded.images, data.images)
        assert len(list(folder.glob("*.npz"))) == 1  # cached beside the folders
    finally:
        shutil.rmtree(folder)  # thousands of files: do not leave them in pytest's temp folders


def test_downloaded_archives_are_used(real, tmp_path, monkeypatch):
    root, data, _ = real
    calls = []

    def fake_download(url, md5, folder, fname, progress):
        calls.append((url, md5, folder, fname))
        shutil.copyfile(root / "omniglot" / fname, folder / fname)

    monkeypatch.setattr(omniglot, "_download", fake_download)
    new_root = tmp_path / "new" / "root"  # created on demand
    loaded = load_omniglot(new_root)  # same bytes as the real archives: found in the user cache
    assert np.array_equal(loaded.images, data.images)
    release = "https://github.com/brendenlake/omniglot/raw/master/python"
    md5s = ("68d2efa1b9178cc56df9314c21c6e718", "6b91aef0f799c5bb55b94e3f2daec811")  # data README
    assert calls == [
        (f"{release}/{name}", md5, new_root / "omniglot", name) for name, md5 in zip(ARCHIVES, md5s)
    ]


def test_truncated_archive(real, tmp_path):
    root, _, _ = real
    folder = tmp_path / "omniglot"
    _copy_archives(folder, root)
    archive = folder / "images_background.zip"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="images_background.zip") as error:
        load_omniglot(tmp_path, download=False)
    assert "\n" not in str(error.value) and "re-download" in str(error.value)


def test_corrupt_member(real, tmp_path):
    root, _, _ = real
    folder = tmp_path / "omniglot"
    _copy_archives(folder, root)
    archive = folder / "images_background.zip"
    raw = bytearray(archive.read_bytes())
    raw[2000:2100] = bytes(100)  # inside one of the first drawings: fails before decoding much
    archive.write_bytes(bytes(raw))
    where = r"images_background\.zip .*at .*Alphabet_of_the_Magi/character01/0709_"
    with pytest.raises(DataError, match=where) as error:
        load_omniglot(tmp_path, download=False)
    assert "\n" not in str(error.value)


def test_garbage_archive(real, tmp_path):
    root, _, _ = real
    folder = tmp_path / "omniglot"
    _copy_archives(folder, root)
    (folder / "images_background.zip").write_bytes(b"this is not a zip archive\n" * 100)
    with pytest.raises(DataError, match="images_background.zip"):
        load_omniglot(tmp_path, download=False)


# --- content checks on small synthetic archives ---------------------------------------


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", size, 1).save(buffer, format="PNG")
    return buffer.getvalue()


def _fake_archive(path: Path, alphabets: int, characters: int, *, drawings=20, first=b"") -> None:
    """An archive in the official layout whose PNGs are empty except the first one:
    enough for the checks that run before decoding. The first character has `drawings`."""
    name = path.name.removesuffix(".zip")
    with zipfile.ZipFile(path, "w") as z:
        for c in range(characters):
            folder = f"{name}/{name}_alphabet{c % alphabets:02d}/character{c:03d}"
            for d in range(drawings if c == 0 else 20):
                z.writestr(f"{folder}/{c:04d}_{d + 1:02d}.png", first if (c, d) == (0, 0) else b"")


@pytest.fixture
def fake_folder(tmp_path):
    folder = tmp_path / "omniglot"
    folder.mkdir()
    _fake_archive(folder / "images_evaluation.zip", 20, 659)
    return folder


def test_wrong_counts(fake_folder):
    _fake_archive(fake_folder / "images_background.zip", 29, 964)
    expected = r"images_background\.zip holds 29 alphabets and 964 characters, expected 30 and 964"
    with pytest.raises(DataError, match=expected):
        load_omniglot(fake_folder.parent, download=False)


def test_wrong_counts_in_extracted_folder(fake_folder):
    character = fake_folder / "images_background" / "Latin" / "character01"
    character.mkdir(parents=True)
    for d in range(20):
        (character / f"0001_{d + 1:02d}.png").write_bytes(_png((105, 105)))
    expected = r"images_background holds 1 alphabets and 1 characters, expected 30 and 964"
    with pytest.raises(DataError, match=expected):
        load_omniglot(fake_folder.parent, download=False)


def test_missing_drawing(fake_folder):
    _fake_archive(fake_folder / "images_background.zip", 30, 964, drawings=19)
    expected = r"images_background\.zip: .*character000 has 19 drawings, expected 20"
    with pytest.raises(DataError, match=expected):
        load_omniglot(fake_folder.parent, download=False)


def test_wrong_image_size(fake_folder):
    _fake_archive(fake_folder / "images_background.zip", 30, 964, first=_png((100, 100)))
    expected = r"images_background\.zip .*character000/0000_01\.png.*not 1-bit 105x105"
    with pytest.raises(DataError, match=expected):
        load_omniglot(fake_folder.parent, download=False, progress=True)


# --- missing data and downloads (never the network) -----------------------------------


def test_missing_without_download(tmp_path):
    with pytest.raises(DataError) as error:
        load_omniglot(tmp_path, download=False)
    message = str(error.value)
    for part in (*ARCHIVES, str(tmp_path / "omniglot"), "--data DIR", "BENCH_DATA"):
        assert part in message
    assert "github.com/brendenlake/omniglot" in message
    assert "\n" not in message


def test_download_network_failure(tmp_path, monkeypatch):
    def offline(*args):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(omniglot, "_download", offline)
    expected = "could not download .*images_background.zip.*Name or service not known"
    with pytest.raises(DataError, match=expected) as error:
        load_omniglot(tmp_path)
    assert str(tmp_path / "omniglot") in str(error.value)
    assert "images_evaluation.zip" in str(error.value)


def test_download_checksum_mismatch(tmp_path, monkeypatch):
    def corrupt(*args):
        raise ValueError("MD5 hash of downloaded file does not match the known hash")

    monkeypatch.setattr(omniglot, "_download", corrupt)
    with pytest.raises(DataError, match="download of .*images_background.zip is corrupt"):
        load_omniglot(tmp_path)


def test_download_into_read_only_root(tmp_path, monkeypatch):
    def never(*args):
        pytest.fail("must not download into a read-only folder")

    monkeypatch.setattr(omniglot, "_download", never)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(DataError, match="not writable"):
            load_omniglot(tmp_path)
        assert not (tmp_path / "omniglot").exists()
    finally:
        tmp_path.chmod(0o755)


# --- splits and rotations ---------------------------------------------------------------


def test_split_sizes_and_reference_shuffle():
    train, val, test = split_characters()
    assert (len(train), len(val), len(test)) == (1200, 0, 423)
    order = list(range(1623))
    random.Random(0).shuffle(order)
    assert train.tolist() == order[:1200] and test.tolist() == order[1200:]
    assert train.dtype == val.dtype == test.dtype == np.int64

    train2, val2, test2 = split_characters(val=100)
    assert (len(train2), len(val2), len(test2)) == (1100, 100, 423)
    assert np.array_equal(test2, test)
    assert train2.tolist() == order[:1100] and val2.tolist() == order[1100:1200]
    assert sorted(np.concatenate([train2, val2, test2]).tolist()) == list(range(1623))


@pytest.mark.parametrize(
    "kwargs", [{"val": -1}, {"val": 1200}, {"train": 1624}, {"train": 10, "val": 10}]
)
def test_split_rejects_bad_sizes(kwargs):
    with pytest.raises(ConfigError):
        split_characters(**kwargs)


def test_augment_rotations_order():
    images = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    rotated = augment_rotations(images)
    assert rotated.shape == (8, 3, 4, 4)
    for c in range(2):
        assert np.array_equal(rotated[4 * c], images[c])
        assert np.array_equal(rotated[4 * c + 1], np.rot90(images[c], 1, axes=(1, 2)))
        for k in range(4):
            assert np.array_equal(rotated[4 * c + k], np.rot90(images[c], k, axes=(1, 2)))
    # Counter-clockwise: the top-right pixel moves to the top-left.
    assert rotated[1, 0, 0, 0] == images[0, 0, 0, 3]


# --- bench.data.root ------------------------------------------------------------------


def test_is_writable_dir(tmp_path):
    assert is_writable_dir(tmp_path)
    assert not is_writable_dir(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    assert not is_writable_dir(tmp_path / "file")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert not is_writable_dir(locked)  # also as root, for whom os.access says yes
    finally:
        locked.chmod(0o755)


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root(str(tmp_path / "arg")) == tmp_path / "arg"
    assert data_root() == tmp_path / "env"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root("~/data") == tmp_path / "home" / "data"
    monkeypatch.delenv("BENCH_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = data_root()
    assert root.name == "data" and "bench" in root.parts
    if sys.platform == "linux":
        assert root == tmp_path / "xdg" / "bench" / "data"


def test_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("BENCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform == "linux":
        assert cache_dir() == tmp_path / "xdg" / "bench"
