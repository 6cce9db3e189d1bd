"""Every bad input of `python -m bench run`, table-driven: a non-zero exit, one line on
stderr that names the problem and the fix, and the file tree exactly as it was (no new,
changed or removed file or folder under the results, the data or the cache)."""

import hashlib
import http.server
import io
import shutil
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from bench.cli import main
from bench.data import omniglot
from conftest import omniglot_root

TINY_SINE = ["--preset", "sine", "--set", "meta_iters=20", "--set", "eval_tasks=5", "--set", "eval_every=0",
             "--set", "log_every=10"]


def tree(root: Path) -> dict[str, tuple]:
    """Every file and folder under `root`: its mode, and for a file its size, content hash
    and modification time (a folder's own time changes when an entry is made and removed
    again, as a failed download does with its folder; its entries are compared instead)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if p.is_dir():
            out[p.relative_to(root).as_posix()] = ("dir", st.st_mode)
        else:
            out[p.relative_to(root).as_posix()] = (st.st_mode, st.st_size, hashlib.sha256(p.read_bytes()).hexdigest(),
                                                   st.st_mtime_ns)
    return out


@dataclass
class Env:
    root: Path
    monkeypatch: pytest.MonkeyPatch
    server: Callable[[], str]
    # The folder `run` writes to and reads data from (created by the cases that need them).
    results: Path = field(init=False)
    data: Path = field(init=False)

    def __post_init__(self):
        self.results = self.root / "results"
        self.data = self.root / "data"

    def omniglot(self, background: bytes | None = None) -> list[str]:
        """A data root with the real images_evaluation.zip and `background` as
        images_background.zip (the real one when None); returns the run options."""
        real = omniglot_root() / "omniglot"
        if not (real / "images_evaluation.zip").is_file():
            pytest.skip(f"the Omniglot archives are not under {real}")
        (self.data / "omniglot").mkdir(parents=True)
        shutil.copy(real / "images_evaluation.zip", self.data / "omniglot")
        target = self.data / "omniglot" / "images_background.zip"
        target.write_bytes((real / "images_background.zip").read_bytes() if background is None else background)
        return ["--preset", "omniglot-5w1s", "--data", str(self.data)]

    def finished_run(self, *extra: str) -> None:
        assert main(["run", "--algo", "reptile", *TINY_SINE, "--results", str(self.results), "--device", "cpu",
                     "--no-progress", *extra]) == 0


def _real_background() -> bytes:
    return (omniglot_root() / "omniglot" / "images_background.zip").read_bytes()


def _escaping_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("images_background/Alphabet/character01/0001_01.png", b"")
        z.writestr("images_background/../../../etc/cron.d/evil", b"* * * * * root true\n")
    return buf.getvalue()


def _no_network(env: Env) -> list[str]:
    # Every request goes through a proxy that refuses connections: no network at all.
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        env.monkeypatch.setenv(var, "http://127.0.0.1:9")
    env.monkeypatch.delenv("NO_PROXY", raising=False)
    env.monkeypatch.delenv("no_proxy", raising=False)
    env.data.mkdir()
    return ["--preset", "omniglot-5w1s", "--data", str(env.data)]


def _wrong_checksum(env: Env) -> list[str]:
    url = env.server()  # serves the same wrong bytes for every path
    env.monkeypatch.setattr(omniglot, "OMNIGLOT_ARCHIVES", {
        name: (f"{url}/{name}.zip", md5) for name, (_, md5) in omniglot.OMNIGLOT_ARCHIVES.items()})
    env.data.mkdir()
    return ["--preset", "omniglot-5w1s", "--data", str(env.data)]


def _unwritable_results(env: Env) -> list[str]:
    env.results.mkdir(mode=0o555)
    return TINY_SINE


def _existing_run(env: Env) -> list[str]:
    env.finished_run()
    return TINY_SINE


def _other_config(env: Env) -> list[str]:
    env.finished_run("--checkpoint-every", "5")
    return [*TINY_SINE, "--set", "inner_lr=0.03", "--resume"]


def _foreign_checkpoint(env: Env) -> list[str]:
    """config.json says seed 0, but checkpoint.pt was copied in from seed 1's run."""
    env.finished_run()
    env.finished_run("--seed", "1")
    runs = env.results / "sine" / "reptile"
    shutil.copy(runs / "seed1" / "checkpoint.pt", runs / "seed0" / "checkpoint.pt")
    (runs / "seed0" / "state.json").unlink()
    (runs / "seed0" / "final.json").unlink()
    return [*TINY_SINE, "--resume"]


def _truncated_checkpoint(env: Env) -> list[str]:
    env.finished_run()
    run = env.results / "sine" / "reptile" / "seed0"
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    (run / "final.json").unlink()
    (run / "state.json").unlink()
    return [*TINY_SINE, "--resume"]


SINE = lambda env: TINY_SINE  # noqa: E731
OMNIGLOT = lambda env: ["--preset", "omniglot-5w1s"]  # noqa: E731

# id: (options after `run`, given the environment; the parts the one-line message must hold)
CASES = {
    "unknown algorithm": (lambda env: ["--algo", "reptil", *TINY_SINE],
                          ["unknown algorithm 'reptil'", "did you mean 'reptile'?"]),
    "unknown preset": (lambda env: ["--preset", "omniglot-5w2s"], ["unknown preset 'omniglot-5w2s'", "did you mean"]),
    "unknown setting": (lambda env: [*TINY_SINE, "--set", "inner_lrr=0.1"],
                        ["unknown setting 'inner_lrr'", "did you mean 'inner_lr'?"]),
    "setting of the wrong type": (lambda env: [*TINY_SINE, "--set", "meta_iters=ten"],
                                  ["setting 'meta_iters' must be an integer", "e.g. --set meta_iters=10"]),
    "a choice that does not exist": (lambda env: [*TINY_SINE, "--set", "inner_optimizer=rmsprop"],
                                     ["'inner_optimizer' is 'rmsprop'", "choose one of sgd, adam"]),
    "more ways than classes": (lambda env: [*OMNIGLOT(env), "--set", "ways=500"],
                               ["ways=500", "the test split has only 423 classes", "lower --set ways"]),
    "more shots than drawings minus queries": (lambda env: [*OMNIGLOT(env), "--set", "shots=20"],
                                               ["shots=20 plus eval_queries=1 exceed the 20 examples per class",
                                                "lower --set shots"]),
    "more train shots than drawings minus the held-out queries": (
        lambda env: [*OMNIGLOT(env), "--set", "tail=separate", "--set", "query_shots=15"],
        ["train_shots=10 plus query_shots=15 exceed the 20 examples per class"]),
    "more sine shots than grid points": (lambda env: [*TINY_SINE, "--set", "shots=60"],
                                         ["shots=60 exceeds the 50 grid points", "lower --set shots"]),
    "negative learning rate": (lambda env: [*TINY_SINE, "--set", "inner_lr=-0.1"],
                               ["'inner_lr' must be greater than 0, got -0.1"]),
    "zero learning rate": (lambda env: [*TINY_SINE, "--set", "meta_lr=0"], ["'meta_lr' must be greater than 0"]),
    "zero count": (lambda env: [*TINY_SINE, "--set", "meta_batch=0"], ["'meta_batch' must be greater than 0"]),
    "negative count": (lambda env: [*TINY_SINE, "--set", "eval_every=-5"], ["'eval_every' must be 0 or more"]),
    "missing archive, no network": (_no_network, ["could not download", "images_background.zip",
                                                  "put images_background.zip and images_evaluation.zip",
                                                  "--data DIR"]),
    "truncated archive": (lambda env: env.omniglot(_real_background()[:2_000_000]),
                          ["images_background.zip is unreadable or corrupt", "re-download it"]),
    "corrupt archive": (lambda env: env.omniglot(b"<html>not a zip</html>" * 100),
                        ["images_background.zip is unreadable or corrupt", "re-download it"]),
    "archive entry outside the data folder": (lambda env: env.omniglot(_escaping_zip()),
                                              ["'images_background/../../../etc/cron.d/evil'",
                                               "points outside the data folder", "refused before anything"]),
    "downloaded archive with the wrong checksum": (_wrong_checksum, ["is corrupt (MD5 is not",
                                                                     "run again to retry"]),
    "unwritable results folder": (_unwritable_results, ["cannot write to the results folder",
                                                        "choose another with --results DIR"]),
    "existing run without --force or --resume": (_existing_run, ["a run already exists", "(finished)",
                                                                 "pass --resume", "--force"]),
    "--force with --resume": (lambda env: [*TINY_SINE, "--force", "--resume"], ["exclude each other"]),
    "bad --checkpoint-every": (lambda env: [*TINY_SINE, "--checkpoint-every", "often"],
                               ["--checkpoint-every 'often'", "e.g. --checkpoint-every 500"]),
    "checkpoint from another config on --resume": (_other_config, [
        "cannot resume", "config.json was made with other settings", "inner_lr=0.02 (now 0.03)",
        "pass --force to start over"]),
    "checkpoint from another run on --resume": (_foreign_checkpoint, [
        "checkpoint.pt was made with other settings", "seed=1 (now 0)"]),
    "truncated checkpoint on --resume": (_truncated_checkpoint, ["checkpoint.pt is unreadable",
                                                                 "pass --force to start the run over"]),
}
if not torch.cuda.is_available():
    CASES["--device cuda without a GPU"] = (lambda env: [*TINY_SINE, "--device", "cuda"],
                                            ["--device cuda, but PyTorch sees no GPU", "use --device cpu"])


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    servers = []

    def server() -> str:
        class Wrong(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = b"not the archive" * 1000
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Wrong)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        return f"http://127.0.0.1:{httpd.server_port}"

    yield Env(tmp_path, monkeypatch, server)
    for httpd in servers:
        httpd.shutdown()
    (tmp_path / "results").exists() and (tmp_path / "results").chmod(0o755)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(env, case, capsys):
    options, parts = CASES[case]
    argv = options(env)
    if "--algo" not in argv:
        argv = ["--algo", "reptile", *argv]
    if "--device" not in argv:
        argv = [*argv, "--device", "cpu"]
    before = tree(env.root)
    capsys.readouterr()

    code = main(["run", *argv, "--results", str(env.results), "--no-progress"])

    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for part in parts:
        assert part in err, (part, err)
    assert tree(env.root) == before
