"""`python -m bench demo`: draw a few symbols, draw one more, watch a meta-learned
Omniglot network classify it.

The page (`demo_static/`) shows N drawing boxes, one per class (one example each),
and a query box. After each stroke it sends the drawings to this server, which does
what the suite's evaluation does for one test task (`bench.evaluate`): it turns each
drawing into a 28x28 input exactly as Omniglot images are made (PAPERS.md section 4:
a 105x105 1-bit image, strokes dark on a light background, resized with Pillow to
28x28, 1.0 = background, 0.0 = stroke), fine-tunes a copy of the checkpoint's
initialisation on the drawings with the run's own evaluation settings (steps, batch,
inner optimizer and its carried state, transduction), and classifies the query. The
answer is the softmax over the drawn classes' outputs, with the fine-tuning losses.

A drawing arrives as a PNG data URL of any size from 28 to 2048 pixels a side: it is
laid on a white background (transparent pixels are background), padded to a square
(centred, so nothing drawn is lost), reduced to Omniglot's 105x105 drawing box by area
averaging, thresholded at half grey into a 1-bit image, and then goes through the
Omniglot loader's own preprocessing. The whole box counts, as the Omniglot drawers'
box did: a symbol drawn small in a corner stays small in a corner.

`--export OUT_DIR` writes a run's checkpoint as a small demo model: the weights and the
inner optimizer state evaluation starts from, the run's settings, its final.json, and
`source.json` saying how it was made. The repository ships one in `demo_model/`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import re
import shlex
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .data.omniglot import IMAGE_SIZE, SOURCE_SIZE, preprocess
from .errors import BenchError
from .learner import Learner, load_learner, read_json

DEFAULT_PORT = 8765
MAX_BODY = 4 * 2**20
"""Largest request body accepted (bytes): a few canvases' PNGs are tens of kB each."""
MIN_SIDE, MAX_SIDE = IMAGE_SIZE, 2048
"""Accepted drawing sizes (pixels a side)."""
SEED = 0
"""Seeds the fine-tuning minibatch plan: the same drawings always give the same answer."""
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
          "/demo.css": ("demo.css", "text/css; charset=utf-8")}
SHIPPED = "demo_model"
"""The folder, inside the package, of the model the demo uses by default."""


class DrawingError(BenchError):
    """A request the server cannot use (the HTTP status says which kind)."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = int(status)


# --- drawings to Omniglot inputs ------------------------------------------------------------


def decode_data_url(text: Any, what: str = "drawing") -> Image.Image:
    """The image in a `data:image/png;base64,...` URL, header checked, pixels not yet read."""
    if not isinstance(text, str):
        raise DrawingError(f"{what} must be a PNG data URL string, got {type(text).__name__}")
    prefix = "data:image/png;base64,"
    if not text.startswith(prefix):
        raise DrawingError(f"{what} is not a PNG data URL (expected {prefix + '...'!r}, got {text[:30]!r})")
    try:
        raw = base64.b64decode(re.sub(r"\s+", "", text[len(prefix):]), validate=True)
    except (binascii.Error, ValueError):
        raise DrawingError(f"{what}: the base64 data is malformed") from None
    try:
        image = Image.open(io.BytesIO(raw))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise DrawingError(f"{what} is not an image Pillow can read") from None
    if image.format != "PNG":
        raise DrawingError(f"{what} is a {image.format} image, not a PNG")
    width, height = image.size
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise DrawingError(f"{what} is {width}x{height} pixels: each side must be {MIN_SIDE} to {MAX_SIDE}",
                           HTTPStatus.UNPROCESSABLE_ENTITY)
    return image


def omniglot_png(image: Image.Image) -> bytes:
    """A drawing as an Omniglot source image: a 105x105 1-bit PNG, white background.

    Transparent pixels are background; the drawing is padded to a centred square with
    white, reduced to 105x105 by area averaging (Image.BOX) and thresholded: a pixel is
    stroke when it is at least half dark."""
    try:
        rgba = image.convert("RGBA")
    except (OSError, SyntaxError, ValueError) as e:
        raise DrawingError(f"the drawing's pixels are unreadable ({' '.join(str(e).split())})") from None
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    gray = Image.alpha_composite(white, rgba).convert("L")
    side = max(gray.size)
    square = Image.new("L", (side, side), 255)
    square.paste(gray, ((side - gray.width) // 2, (side - gray.height) // 2))
    small = np.asarray(square.resize(SOURCE_SIZE, Image.BOX))
    out = io.BytesIO()
    Image.fromarray(small >= 128).save(out, format="PNG")  # bool -> mode "1", True = background
    return out.getvalue()


def drawing_input(text: Any, what: str = "drawing") -> np.ndarray:
    """A PNG data URL as the network's input: uint8 (28, 28), 1 = background, 0 = stroke,
    made by the Omniglot loader's own preprocessing (`bench.data.omniglot.preprocess`)."""
    pixels = preprocess(omniglot_png(decode_data_url(text, what))).astype(np.uint8)
    if pixels.all():
        raise DrawingError(f"{what} is empty (or too faint or small to survive the resize to 28x28): "
                           "draw something", HTTPStatus.UNPROCESSABLE_ENTITY)
    return pixels


def input_png(pixels: np.ndarray) -> str:
    """A 28x28 input (1 = background) as a PNG data URL, to show what the network sees."""
    out = io.BytesIO()
    Image.fromarray(pixels.astype(bool)).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


# --- checkpoints ----------------------------------------------------------------------------


@dataclass
class DemoModel:
    """A checkpoint ready to classify drawings: a `bench.learner.Learner` (the
    initialisation, the inner optimizer state evaluation starts from, and the evaluation
    settings of its run) and what the page shows about it."""

    learner: Learner
    info: dict[str, Any]
    """What the page shows about it (JSON)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def path(self) -> Path:
        return self.learner.path

    @property
    def cfg(self):
        """The settings evaluation runs with (the run's protocol applied)."""
        return self.learner.cfg

    @property
    def train_cfg(self):
        return self.learner.train_cfg

    @property
    def run(self) -> dict[str, Any]:
        """The run's identity as its checkpoint records it (settings, algo, preset, seed, protocol)."""
        return self.learner.run

    @property
    def params(self) -> dict:
        """The initialisation."""
        return self.learner.params

    @property
    def state(self) -> dict:
        """The inner optimizer state fine-tuning starts from."""
        return self.learner.state

    @property
    def ways(self) -> int:
        return self.cfg.ways

    def classify(self, support: np.ndarray, query: np.ndarray) -> dict[str, Any]:
        """Fine-tune on one drawing per class (support: (N, 28, 28), class i = row i) as the
        run's evaluation does, then classify the query (28, 28). Returns the softmax over
        the N classes' outputs, the prediction, each fine-tuning step's loss and the time."""
        import torch

        n = len(support)
        if not 2 <= n <= self.ways:
            raise DrawingError(f"{n} classes drawn: this model tells 2 to {self.ways} classes apart")
        start = time.perf_counter()
        x = np.asarray(support, np.float32)[:, None]  # (N, 1, 28, 28), 1.0 = background
        q = np.asarray(query, np.float32)[None, None]
        with self.lock:
            # The evaluation's minibatch plan (bench.episodes): eval_steps batches of eval_batch,
            # without replacement, reshuffled whenever the N drawings run out.
            adapted, losses = self.learner.adapt(x, np.arange(n), seed=SEED)
            logits = self.learner.outputs(adapted, x, q)[0, :n]
        probs = torch.softmax(logits.double(), 0)
        return {"probabilities": probs.tolist(), "predicted": int(probs.argmax()),
                "losses": losses.tolist(), "seconds": round(time.perf_counter() - start, 3)}


def _describe(learner: Learner) -> dict[str, Any]:
    run, cfg, final = learner.run, learner.cfg, learner.final
    accuracy = None
    if final and final.get("metric") == "accuracy":
        accuracy = {k: final.get(k) for k in ("value", "ci95", "tasks", "transductive")}
    return {"algo": run.get("algo"), "preset": run.get("preset"), "seed": run.get("seed"),
            "ways": cfg.ways, "shots": cfg.shots, "meta_iters": learner.train_cfg.meta_iters,
            "step": learner.step, "accuracy": accuracy,
            "eval_protocol": (run.get("eval_protocol") or {}).get("name", "shared"),
            "fine_tuning": {"optimizer": cfg.inner_optimizer, "lr": cfg.inner_lr, "beta1": cfg.inner_beta1,
                            "steps": cfg.eval_steps, "batch": cfg.eval_batch, "inner_state": cfg.inner_state,
                            "transductive": cfg.transductive}}


def load_model(path: str | Path) -> DemoModel:
    """The Omniglot classifier in a run folder (its checkpoint.pt) or checkpoint file,
    with its run's evaluation settings (`bench.learner.load_learner`). Raises BenchError
    (one line) for a missing, unreadable or foreign file, or a run that is not Omniglot
    classification."""
    learner = load_learner(path)
    if learner.train_cfg.task != "omniglot":
        raise BenchError(f"{learner.path} is a {learner.train_cfg.task} run, not an Omniglot classification run: "
                         "the demo needs a checkpoint of an Omniglot preset (e.g. results/omniglot-5w1s/reptile/seed0)")
    return DemoModel(learner, _describe(learner))


def export_model(source: str | Path, out: str | Path) -> Path:
    """Write the run in `source` as a small demo model folder `out`: checkpoint.pt with the
    weights and only the inner optimizer state its evaluation reads, the run's
    config.json and final.json, and source.json (the commands, the result, the date)."""
    import torch

    from .results import write_json

    m = load_model(source)
    out = Path(out)
    if out.resolve() == m.path.parent.resolve():
        raise BenchError(f"--export {out} is the run's own folder: choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    state = {}
    if m.cfg.inner_state == "carry":
        keep_m = m.cfg.inner_optimizer != "adam" or m.cfg.inner_beta1 != 0
        state = {k: v for k, v in m.state.items() if keep_m or not k.startswith("m.")}
    torch.save({"params": m.params, "inner_state": state, "config": m.train_cfg.to_dict(), "run": m.run,
                "algo": m.run.get("algo"), "preset": m.run.get("preset"), "seed": m.run.get("seed"),
                "step": m.info["step"]}, out / "checkpoint.pt")
    folder = m.path.parent
    config, final = read_json(folder / "config.json"), read_json(folder / "final.json")
    if config is None:
        config = {**m.train_cfg.to_dict(), **{k: v for k, v in m.run.items() if k not in m.train_cfg.to_dict()}}
    write_json(out / "config.json", config)
    if final is not None:
        write_json(out / "final.json", final)
    env, marker = read_json(folder / "env.json") or {}, read_json(folder / "state.json") or {}
    write_json(out / "source.json", {
        "made_by": _run_command(config),
        "exported_by": f"python -m bench demo --checkpoint {shlex.quote(str(source))} --export {shlex.quote(str(out))}",
        "finished": marker.get("updated"),
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "accuracy": m.info["accuracy"],
        "meta_iters": m.train_cfg.meta_iters, "train_seconds": (final or {}).get("train_seconds"),
        "environment": {k: env.get(k) for k in ("torch", "python", "device", "cpu_threads", "git_commit")},
        "kept": "the initialisation and the inner optimizer state the run's evaluation starts from"
                + (" (Adam's first moment left out: with beta1 = 0 it is never read)"
                   if state and not any(k.startswith("m.") for k in state) else ""),
    })
    return out


def _run_command(config: dict[str, Any]) -> str | None:
    """The `python -m bench run` command that makes the run config.json describes
    (--data and --results aside: they change no result)."""
    if not {"algo", "preset", "seed"} <= set(config):
        return None
    parts = ["python", "-m", "bench", "run", "--algo", str(config["algo"]), "--preset", str(config["preset"]),
             "--seed", str(config["seed"])]
    for key, value in (config.get("overrides") or {}).items():
        parts += ["--set", f"{key}={value}"]
    protocol = (config.get("eval_protocol") or {}).get("name", "shared")
    if config.get("own_protocol"):
        parts += ["--eval-protocol", "both"]
    elif protocol != "shared":
        parts += ["--eval-protocol", "own"]
    return " ".join(shlex.quote(p) for p in parts)


def shipped_model() -> Path:
    """The checkpoint the repository ships (a small Reptile run, see its source.json)."""
    return Path(str(resources.files("bench") / SHIPPED / "checkpoint.pt"))


def find_checkpoints(results: Path) -> list[Path]:
    """The run checkpoints under `results` whose config.json says Omniglot, sorted."""
    found = []
    for file in sorted(Path(results).rglob("checkpoint.pt")):
        config = read_json(file.parent / "config.json")
        if config and config.get("task") == "omniglot":
            found.append(file)
    return found


# --- the server -----------------------------------------------------------------------------


@dataclass
class Entry:
    id: str
    label: str
    model: DemoModel


def _label(m: DemoModel, name: str) -> str:
    info, acc = m.info, m.info["accuracy"] or {}
    score = f", {100 * acc['value']:.1f}%" if isinstance(acc.get("value"), (int, float)) else ""
    if score and isinstance(acc.get("tasks"), int):
        score += f" on {acc['tasks']:,} test tasks"
    step = info["step"] if info["step"] is not None else info["meta_iters"]
    return f"{name}: {info['algo']} {info['preset']} seed {info['seed']}, {step:,} meta-iterations{score}"


class DemoServer(ThreadingHTTPServer):
    """The page and its JSON API, on a local address."""

    daemon_threads = True
    allow_reuse_address = False  # a port in use is an error, not shared

    def __init__(self, address: tuple[str, int], entries: list[Entry], quiet: bool = True):
        self.entries = {e.id: e for e in entries}
        self.order = [e.id for e in entries]
        self.quiet = quiet
        super().__init__(address, DemoHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'localhost' if host in ('127.0.0.1', '::1') else host}:{port}/"

    def checkpoints(self) -> dict[str, Any]:
        return {"default": self.order[0],
                "checkpoints": [{"id": i, "label": self.entries[i].label, "path": str(self.entries[i].model.path),
                                 **self.entries[i].model.info} for i in self.order]}

    def classify(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict):
            raise DrawingError("the body must be a JSON object {\"support\": [...], \"query\": \"...\"}")
        unknown = sorted(set(request) - {"checkpoint", "support", "query"})
        if unknown:
            raise DrawingError(f"unknown field(s) {', '.join(map(repr, unknown))}: send checkpoint, support, query")
        key = str(request.get("checkpoint", self.order[0]))
        if key not in self.entries:
            raise DrawingError(f"unknown checkpoint {key!r}: choose one of {', '.join(self.order)} "
                               "(GET /api/checkpoints)", HTTPStatus.NOT_FOUND)
        entry = self.entries[key]
        support = request.get("support")
        if not isinstance(support, list):
            raise DrawingError("'support' must be a list of drawings (PNG data URLs), one per class")
        ways = entry.model.ways
        if not 2 <= len(support) <= ways:
            raise DrawingError(f"{len(support)} class drawings: send 2 to {ways} (this model's ways)",
                               HTTPStatus.UNPROCESSABLE_ENTITY)
        if "query" not in request:
            raise DrawingError("'query' is missing: send the drawing to classify as a PNG data URL")
        xs = np.stack([drawing_input(s, f"class {i + 1}'s drawing") for i, s in enumerate(support)])
        q = drawing_input(request["query"], "the query drawing")
        out = entry.model.classify(xs, q)
        return {"checkpoint": key, **out, "settings": entry.model.info["fine_tuning"],
                "inputs": {"support": [input_png(x) for x in xs], "query": input_png(q)}}


class DemoHandler(BaseHTTPRequestHandler):
    server: DemoServer
    timeout = 30  # seconds a client may take to send its request
    protocol_version = "HTTP/1.1"
    server_version = "bench-demo"

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, ctype: str, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any, close: bool = False) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", close)

    def _error(self, status: int, message: str, close: bool = False) -> None:
        self._json(status, {"error": message, "status": status}, close)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path == "/api/checkpoints":
            self._json(200, self.server.checkpoints())
        elif path in STATIC:
            name, ctype = STATIC[path]
            self._send(200, (resources.files("bench") / "demo_static" / name).read_bytes(), ctype)
        else:
            self._error(404, f"no page {path!r}: open / for the demo, GET /api/checkpoints, POST /api/classify")

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        raw_length = self.headers.get("Content-Length")
        if path != "/api/classify":
            # The body is not read: close the connection rather than parse it as a request.
            self._error(404, f"no endpoint {path!r}: POST /api/classify", close=True)
            return
        if raw_length is None:
            self._error(411, "the request needs a Content-Length header", close=True)
            return
        try:
            length = int(raw_length)
            if length < 0:
                raise ValueError
        except ValueError:
            self._error(400, f"bad Content-Length {raw_length!r}", close=True)
            return
        if length > MAX_BODY:
            self._error(413, f"the body is {length:,} bytes, over the limit of {MAX_BODY:,}", close=True)
            return
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        try:
            body = self.rfile.read(length)
        except OSError:  # includes the socket timeout
            self.close_connection = True
            return
        if len(body) < length:
            self.close_connection = True
            return
        if ctype != "application/json":
            self._error(415, f"send JSON (Content-Type: application/json), not {ctype or 'no type'!r}")
            return
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            self._error(400, f"the body is not valid JSON ({e})")
            return
        try:
            self._json(200, self.server.classify(request))
        except DrawingError as e:
            self._error(e.status, str(e))
        except Exception as e:  # the server keeps running whatever one request does
            self._error(500, f"internal error: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
            if not self.server.quiet:
                raise


def build_entries(checkpoint: str | None, results: str | None) -> list[Entry]:
    """The selectable checkpoints: `checkpoint` (else the shipped model) first, then the
    shipped model, then every Omniglot run under `results` (unreadable ones are skipped
    with a line on stderr)."""
    first = load_model(checkpoint) if checkpoint else load_model(shipped_model())
    entries = [Entry("0", _label(first, "--checkpoint" if checkpoint else "shipped"), first)]
    seen = {first.path.resolve()}
    if checkpoint and (shipped := shipped_model()).is_file() and shipped.resolve() not in seen:
        m = load_model(shipped)
        entries.append(Entry(str(len(entries)), _label(m, "shipped"), m))
        seen.add(shipped.resolve())
    folder = Path(results) if results else Path("results")
    if results and not folder.is_dir():
        raise BenchError(f"--results {results} is not a folder: give the results folder whose runs to offer")
    if folder.is_dir():
        for file in find_checkpoints(folder):
            if file.resolve() in seen:
                continue
            try:
                m = load_model(file)
            except BenchError as e:
                print(f"skipped: {e}", file=sys.stderr)
                continue
            seen.add(file.resolve())
            entries.append(Entry(str(len(entries)), _label(m, str(file.parent.relative_to(folder))), m))
    return entries


def make_server(entries: list[Entry], host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                quiet: bool = True) -> DemoServer:
    """The server, bound (port 0: a free one); BenchError when the address is unusable."""
    if not 0 <= port <= 65535:
        raise BenchError(f"--port {port} is not a port number: give 1 to 65535 (0 picks a free one)")
    try:
        return DemoServer((host, port), entries, quiet)
    except OSError as e:
        if e.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
            raise BenchError(f"port {port} on {host} is in use: choose another with --port N "
                             "(--port 0 picks a free one)") from None
        raise BenchError(f"cannot serve on {host}:{port} ({e.strerror or e}): choose another --host or --port"
                         ) from None
    except socket.gaierror as e:
        raise BenchError(f"cannot serve on {host}:{port} ({e.strerror}): choose another --host") from None


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="the interactive 1-shot page: draw symbols, watch a meta-learned model classify")
    d.add_argument("--checkpoint", default=None, metavar="RUN_DIR_OR_FILE",
                   help="an Omniglot run folder or its checkpoint.pt (default: the shipped Reptile model)")
    d.add_argument("--results", default=None, metavar="DIR",
                   help="offer every Omniglot run under DIR in the page's selector (default: results, when present)")
    d.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    d.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    d.add_argument("--export", default=None, metavar="OUT_DIR",
                   help="instead of serving, write --checkpoint's run as a small demo model folder")
    d.add_argument("--verbose", action="store_true", help="log every request")


def main_demo(args: argparse.Namespace) -> int:
    if args.export:
        if not args.checkpoint:
            raise BenchError("--export needs --checkpoint RUN_DIR: the run to export")
        out = export_model(args.checkpoint, args.export)
        size = (out / "checkpoint.pt").stat().st_size
        print(f"exported {args.checkpoint} to {out} (checkpoint.pt: {size:,} bytes)")
        return 0
    entries = build_entries(args.checkpoint, args.results)
    server = make_server(entries, args.host, args.port, quiet=not args.verbose)
    print(f"demo: {server.url} ({len(entries)} checkpoint{'s' if len(entries) > 1 else ''}; Ctrl-C stops it)",
          flush=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if main_thread else None  # SIGTERM stops it as Ctrl-C does
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0
