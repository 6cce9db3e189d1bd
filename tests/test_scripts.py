"""The shell scripts' input checks: a bad setting is a one-line error before anything is
written or installed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def script(name, *args, env=None):
    return subprocess.run(["bash", str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


@pytest.mark.parametrize("setting, words", [({"COLUMN": "5w2s"}, ["COLUMN=5w2s", "5w1s, 5w5s, 20w1s or 20w5s"]),
                                            ({"ALGO": "protonet"}, ["ALGO=protonet", "reptile, fomaml or maml"])])
def test_full_scale_runs_refuses_an_unknown_column_or_algorithm_before_writing(tmp_path, setting, words):
    results = tmp_path / "runs"
    done = script("full_scale_runs.sh", str(results), "0", env={**setting, "PYTHON": sys.executable})
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert all(w in done.stderr for w in words)
    assert not results.exists()


def test_install_learn2learn_stops_with_status_75_when_the_disk_lacks_room(tmp_path):
    """Status 75 is what .ci/run reads as "skip the optional peer"; nothing is installed."""
    calls = tmp_path / "calls"
    fake_python = tmp_path / "python"  # no torch 2.14.1 here; its prefix is tmp_path
    fake_python.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n'
                           f'case "$*" in *torch*) exit 1 ;; *sys.prefix*) echo "{tmp_path}" ;; esac\n')
    fake_df = tmp_path / "df"  # 1,234 MB free
    fake_df.write_text("#!/bin/sh\necho 'Filesystem 1048576-blocks Used Available Capacity Mounted on'\n"
                       "echo '/dev/x 100000 98766 1234 99% /'\n")
    for f in (fake_python, fake_df):
        f.chmod(0o755)
    done = script("install_learn2learn.sh", env={"PYTHON": str(fake_python),
                                                 "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert done.returncode == 75
    assert done.stderr.strip().splitlines() == [
        f"install_learn2learn.sh: torch 2.14.1 and learn2learn need about 7000 MB free under {tmp_path}, "
        "which has 1234 MB: free some space there and run it again"]
    assert "pip" not in calls.read_text()
