#!/usr/bin/env bash
# Install learn2learn 0.2.0, the reference peer, into the active Python environment
# (or the one named by $PYTHON). Its sdist's generated C files predate Python 3.11
# (learn2learn issue #413), so they are regenerated with a current Cython before the
# build. learn2learn 0.2.0 then needs torch with a matching torchvision; gsutil and
# qpth, which it lists, are not needed for what the suite uses (algorithms.MAML).
set -euo pipefail
py="$(command -v "${PYTHON:-python}")"
case "$py" in /*) ;; *) py="$PWD/$py" ;; esac  # the build below runs in another folder
"$py" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" gym scipy requests tqdm \
    "cython>=3" setuptools wheel
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$py" -m pip download --quiet --no-deps --no-binary :all: "learn2learn==0.2.0" -d "$work"
tar -xzf "$work"/learn2learn-0.2.0.tar.gz -C "$work"
cd "$work/learn2learn-0.2.0"
"$py" -m Cython.Build.Cythonize -3 --force learn2learn/data/*.pyx
"$py" -m pip install --quiet --no-deps --no-build-isolation .
cd /  # check the installed package, not the source tree
"$py" -c "import learn2learn, torch; print('learn2learn', learn2learn.__version__, 'torch', torch.__version__)"
