"""`python -m bench demo`: drawings to Omniglot inputs, the JSON endpoint, bad requests,
the command line, and the shipped model on real Omniglot test characters."""

import base64
import io
import json
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench import cli
from bench.config import load_config
from bench.data.omniglot import preprocess, load_omniglot, split_characters
from bench.demo import (DrawingError, build_entries, drawing_input, export_model, load_model, make_server,
                        shipped_model)
from bench.models import build_model
from conftest import REPO

CANVAS = 280  # the page's drawing resolution


def data_url(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def as_canvas(png: bytes, size: int = CANVAS, resample=Image.BILINEAR, transparent: bool = True) -> Image.Image:
    """An Omniglot drawing (105x105 1-bit PNG) as the page's canvas would send it: black
    strokes, at canvas size (smoothed edges unless NEAREST), on a transparent or white
    background."""
    with Image.open(io.BytesIO(png)) as im:
        darkness = 255 - np.asarray(im.convert("L").resize((size, size), resample))
    if not transparent:
        return Image.fromarray((255 - darkness).astype(np.uint8)).convert("RGB")
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., 3] = darkness  # black, with the stroke's darkness as its opacity
    return Image.fromarray(rgba, "RGBA")


class OmniglotPNGs:
    """The original 105x105 PNGs of Omniglot's characters, in the suite's character order."""

    def __init__(self, root: Path):
        self.characters = load_omniglot(root, download=False).characters
        self.files: dict[str, list] = {}
        for name in ("images_background", "images_evaluation"):
            archive = root / "omniglot" / f"{name}.zip"
            if archive.is_file():
                z = zipfile.ZipFile(archive)
                members = [(m, z.read) for m in z.namelist()]
            else:
                base = root / "omniglot"
                members = [(p.relative_to(base).as_posix(), lambda m, b=base: (b / m).read_bytes())
                           for p in (base / name).rglob("*.png")]
            for member, read in members:
                parts = member.split("/")
                if len(parts) == 4 and parts[3].endswith(".png"):
                    self.files.setdefault(f"{parts[1]}/{parts[2]}", []).append((member, read))
        for files in self.files.values():
            files.sort()

    def png(self, character: int, drawing: int) -> bytes:
        member, read = self.files[self.characters[character]][drawing]
        return read(member)


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(one_thread):
    entries = build_entries(None, str(REPO / "tests"))  # the shipped model alone (no runs under tests/)
    srv = make_server(entries, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def post(srv, body, ctype="application/json", path="/api/classify"):
    """(status, JSON answer) of a POST."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(srv.url.rstrip("/") + path, data=data, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def strokes(*lines, size=CANVAS, width=13):
    """A canvas-sized white image with black polylines (lists of (x, y) in 0..1)."""
    from PIL import ImageDraw

    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    for line in lines:
        d.line([(x * size, y * size) for x, y in line], fill="black", width=width, joint="curve")
    return im


SHAPES = [[(0.3, 0.3), (0.7, 0.7)], [(0.5, 0.25), (0.5, 0.75)], [(0.25, 0.5), (0.75, 0.5), (0.5, 0.25)]]


# --- drawings to inputs ---------------------------------------------------------------------


def test_a_canvas_sized_omniglot_drawing_becomes_the_loaders_own_input(omniglot_data):
    pngs = OmniglotPNGs(omniglot_data)
    _, _, test = split_characters(len(pngs.characters))
    for c in test[:5]:
        png = pngs.png(c, 3)
        expected = preprocess(png).astype(np.uint8)
        # 3x the 105x105 box, each pixel a 3x3 block: the area reduction gives the original back.
        for transparent in (True, False):
            got = drawing_input(data_url(as_canvas(png, 315, Image.NEAREST, transparent)))
            assert got.dtype == np.uint8 and got.shape == (28, 28)
            assert np.array_equal(got, expected)
        # The page's 280-pixel canvas with smoothed stroke edges: the same input but for a few edge pixels.
        smooth = drawing_input(data_url(as_canvas(png)))
        assert (smooth == expected).mean() > 0.97
        assert set(np.unique(smooth)) <= {0, 1} and smooth.mean() > 0.5  # 1 = background, mostly


def test_a_non_square_drawing_is_padded_to_a_centred_square():
    wide = strokes(SHAPES[0], size=300).crop((0, 50, 300, 250))  # 300x200
    square = Image.new("RGB", (300, 300), "white")
    square.paste(wide, (0, 50))
    assert np.array_equal(drawing_input(data_url(wide)), drawing_input(data_url(square)))


def test_strokes_are_dark_and_the_background_is_one():
    pixels = drawing_input(data_url(strokes([(0.1, 0.5), (0.9, 0.5)])))
    assert pixels[0].all() and pixels[-1].all()  # background rows
    assert not pixels[14, 4:24].any() and pixels[14, :2].all()  # the stroke through the middle, not to the edges


@pytest.mark.parametrize("value, status, words", [
    (42, 400, "must be a PNG data URL"),
    ("data:image/jpeg;base64,AAAA", 400, "not a PNG data URL"),
    ("data:image/png;base64,@@@@", 400, "malformed"),
    ("data:image/png;base64," + base64.b64encode(b"hello, not an image").decode(), 400, "not an image"),
    ("jpeg", 400, "not a PNG"),
    ("small", 422, "each side must be"),
    ("huge", 422, "each side must be"),
    ("truncated", 400, "unreadable"),
    ("blank", 422, "empty"),
])
def test_bad_drawings_are_refused_with_the_reason(value, status, words):
    if value == "jpeg":
        out = io.BytesIO()
        strokes(SHAPES[0]).save(out, format="JPEG")
        value = "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
    elif value == "small":
        value = data_url(Image.new("RGB", (20, 20), "white"))
    elif value == "huge":
        value = data_url(Image.new("1", (4096, 30), 1))
    elif value == "truncated":
        raw = base64.b64decode(data_url(strokes(SHAPES[0])).split(",")[1])
        value = "data:image/png;base64," + base64.b64encode(raw[: len(raw) // 2]).decode()
    elif value == "blank":
        value = data_url(Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0)))
    with pytest.raises(DrawingError, match=words) as err:
        drawing_input(value)
    assert err.value.status == status


# --- the endpoint -----------------------------------------------------------------------------


def test_pages_and_checkpoint_list(server):
    with urllib.request.urlopen(server.url, timeout=10) as r:
        assert r.status == 200 and b"demo.js" in r.read()
    for path in ("demo.js", "demo.css"):
        with urllib.request.urlopen(server.url + path, timeout=10) as r:
            assert r.status == 200
    with urllib.request.urlopen(server.url + "api/checkpoints", timeout=10) as r:
        listing = json.loads(r.read())
    first = listing["checkpoints"][0]
    assert listing["default"] == first["id"] and first["label"].startswith("shipped: reptile omniglot-5w1s")
    assert first["ways"] == 5 and first["fine_tuning"]["steps"] == 50 and first["fine_tuning"]["inner_state"] == "carry"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server.url + "../bench/demo.py", timeout=10)
    assert err.value.code == 404 and "no page" in json.loads(err.value.read())["error"]


def test_classify_answers_probabilities_losses_and_inputs(server):
    status, out = post(server, {"support": [data_url(strokes(s)) for s in SHAPES],
                                "query": data_url(strokes(SHAPES[1]))})
    assert status == 200, out
    assert len(out["probabilities"]) == 3 and abs(sum(out["probabilities"]) - 1) < 1e-9
    assert out["predicted"] == int(np.argmax(out["probabilities"])) == 1  # the query is class 2's drawing
    model = load_model(shipped_model())
    assert len(out["losses"]) == model.cfg.eval_steps and out["losses"][-1] < out["losses"][0]
    assert out["settings"] == model.info["fine_tuning"]
    seen = out["inputs"]["support"][0]
    with Image.open(io.BytesIO(base64.b64decode(seen.split(",")[1]))) as im:
        assert im.size == (28, 28)
    # The same drawings, the same answer (the fine-tuning plan is seeded).
    assert post(server, {"support": [data_url(strokes(s)) for s in SHAPES],
                         "query": data_url(strokes(SHAPES[1]))})[1]["probabilities"] == out["probabilities"]


def _raw(server, request: bytes) -> tuple[int, dict]:
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_bad_requests_get_a_4xx_answer_and_the_server_keeps_running(server):
    good = data_url(strokes(SHAPES[0]))
    cases = [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b"[1, 2]", "application/json", 400, "JSON object"),
        (b'{"support": []}', "text/plain", 415, "application/json"),
        ({"support": [good], "query": good}, None, 422, "send 2 to 5"),
        ({"support": [good] * 6, "query": good}, None, 422, "send 2 to 5"),
        ({"support": good, "query": good}, None, 400, "must be a list"),
        ({"support": [good, good]}, None, 400, "'query' is missing"),
        ({"support": [good, good], "query": good, "extra": 1}, None, 400, "unknown field"),
        ({"support": [good, good], "query": good, "checkpoint": "99"}, None, 404, "unknown checkpoint"),
        ({"support": [good, "data:image/png;base64,AAAA"], "query": good}, None, 400, "class 2's drawing"),
        ({"support": [good, good], "query": None}, None, 400, "query drawing must be"),
    ]
    for body, ctype, status, words in cases:
        got, answer = post(server, body, ctype or "application/json")
        assert got == status and words in answer["error"], (body if isinstance(body, bytes) else list(body), answer)
        assert answer["status"] == status
    assert post(server, {"support": [good, good], "query": good}, path="/api/other")[0] == 404

    host = f"{server.server_address[0]}:{server.server_address[1]}"
    status, answer = _raw(server, f"POST /api/classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                                  f"Content-Length: {10**9}\r\n\r\n".encode())
    assert status == 413 and "over the limit" in answer["error"]
    status, answer = _raw(server, f"POST /api/classify HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert status == 411
    status, answer = _raw(server, f"POST /api/classify HTTP/1.1\r\nHost: {host}\r\nContent-Length: x\r\n\r\n".encode())
    assert status == 400

    status, out = post(server, {"support": [data_url(strokes(s)) for s in SHAPES[:2]], "query": good})
    assert status == 200 and len(out["probabilities"]) == 2


def _accuracy(server, root: Path, trials: int, ways: int = 3, seed: int = 0) -> float:
    """Trials of the page's task with real Omniglot test characters: one drawing of each of
    `ways` characters as the classes, another drawing of one of them as the query, all
    rendered at canvas size and sent to the endpoint. Returns the fraction classified right."""
    pngs = OmniglotPNGs(root)
    _, _, test = split_characters(len(pngs.characters))
    rng = np.random.default_rng(seed)
    right = 0
    for _ in range(trials):
        chars = rng.choice(test, ways, replace=False)
        drawings = rng.choice(20, 2, replace=False)
        target = int(rng.integers(ways))
        status, out = post(server, {"support": [data_url(as_canvas(pngs.png(c, drawings[0]))) for c in chars],
                                    "query": data_url(as_canvas(pngs.png(chars[target], drawings[1])))})
        assert status == 200, out
        right += out["predicted"] == target
    return right / trials


def test_real_omniglot_characters_are_recognised_in_most_trials(server, omniglot_data):
    accuracy = _accuracy(server, omniglot_data, trials=30)
    print(f"3-way 1-shot accuracy over 30 trials through the endpoint: {accuracy:.3f}")
    assert accuracy >= 0.7  # chance is 1/3


@pytest.mark.slow
def test_real_omniglot_characters_many_trials(server, omniglot_data):
    for ways, trials, floor in ((3, 300, 0.8), (5, 200, 0.7)):
        accuracy = _accuracy(server, omniglot_data, trials=trials, ways=ways, seed=1)
        print(f"{ways}-way 1-shot accuracy over {trials} trials through the endpoint: {accuracy:.3f}")
        assert accuracy >= floor


# --- checkpoints ------------------------------------------------------------------------------


def _sine_checkpoint(folder: Path) -> Path:
    cfg = load_config("sine")
    folder.mkdir(parents=True)
    params = {k: v.detach() for k, v in build_model(cfg).named_parameters()}
    torch.save({"params": params, "config": cfg.to_dict()}, folder / "checkpoint.pt")
    (folder / "config.json").write_text(json.dumps({**cfg.to_dict(), "preset": "sine", "algo": "reptile"}))
    return folder


def test_the_shipped_model_is_small_and_says_how_it_was_made():
    folder = shipped_model().parent
    assert shipped_model().stat().st_size < 1_000_000
    source = json.loads((folder / "source.json").read_text())
    assert source["made_by"].startswith("python -m bench run --algo reptile --preset omniglot-5w1s")
    final = json.loads((folder / "final.json").read_text())
    assert source["accuracy"]["value"] == final["value"] > 0.6
    out = subprocess.run(["git", "check-ignore", "-q", str(shipped_model())], cwd=REPO)
    assert out.returncode == 1, "the shipped model would be ignored by git"


def test_export_keeps_what_evaluation_reads(tmp_path, one_thread):
    """A full run checkpoint (Adam moments carried) and its export classify identically:
    with beta1 = 0 the first moment the export leaves out is never read."""
    shipped = load_model(shipped_model())
    run = tmp_path / "run"
    run.mkdir()
    gen = torch.Generator().manual_seed(0)
    state = {**shipped.state, **{f"m.{k}": torch.randn(v.shape, generator=gen) for k, v in shipped.params.items()}}
    torch.save({"params": shipped.params, "inner_state": state, "config": shipped.train_cfg.to_dict(),
                "run": shipped.run, "algo": "reptile", "preset": "omniglot-5w1s", "seed": 0, "step": 7},
               run / "checkpoint.pt")
    out = export_model(run, tmp_path / "export")
    exported = torch.load(out / "checkpoint.pt", weights_only=True)
    assert not any(k.startswith("m.") for k in exported["inner_state"]) and "t" in exported["inner_state"]
    xs = np.stack([drawing_input(data_url(strokes(s))) for s in SHAPES])
    a = load_model(run).classify(xs, xs[2])
    b = load_model(out).classify(xs, xs[2])
    assert a["probabilities"] == b["probabilities"] and a["losses"] == b["losses"]


def test_selector_lists_the_omniglot_runs_under_results(tmp_path):
    results = tmp_path / "results"
    export_model(shipped_model(), results / "omniglot-5w1s" / "copy" / "seed0")
    _sine_checkpoint(results / "sine" / "reptile" / "seed0")
    entries = build_entries(None, str(results))
    assert [e.label.split(":")[0] for e in entries] == ["shipped", "omniglot-5w1s/copy/seed0"]
    entries = build_entries(str(results / "omniglot-5w1s" / "copy" / "seed0"), str(results))
    assert [e.label.split(":")[0] for e in entries] == ["--checkpoint", "shipped"]


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    sine = _sine_checkpoint(tmp_path / "sine")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        for args, words in [
            (["--checkpoint", str(tmp_path / "missing")], "does not exist"),
            (["--checkpoint", str(tmp_path)], "holds no checkpoint.pt"),
            (["--checkpoint", str(sine)], "not an Omniglot classification run"),
            (["--checkpoint", str(tmp_path / "junk.pt")], "not a readable checkpoint"),
            (["--results", str(tmp_path / "nowhere")], "is not a folder"),
            (["--port", str(busy.getsockname()[1])], "is in use"),
            (["--port", "70000"], "not a port number"),
            (["--export", str(tmp_path / "out")], "--export needs --checkpoint"),
        ]:
            assert cli.main(["demo", *args]) == 2, args
            err = capsys.readouterr().err
            assert err.startswith("error: ") and err.count("\n") == 1 and words in err, (args, err)
    finally:
        busy.close()


def test_the_command_serves_the_page_until_stopped(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "bench", "demo", "--port", "0", "--results", str(tmp_path)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://localhost:\d+/", line)
        assert url, (line, proc.stderr.read() if proc.poll() is not None else "")
        with urllib.request.urlopen(url[0] + "api/checkpoints", timeout=30) as r:
            assert len(json.loads(r.read())["checkpoints"]) == 1
    finally:
        proc.terminate()  # SIGTERM stops it as Ctrl-C does
        assert proc.wait(timeout=30) == 0
