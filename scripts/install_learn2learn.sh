#!/usr/bin/env bash
# Install learn2learn 0.2.0, the reference peer, into the active Python environment
# (or the one named by $PYTHON). Its sdist's generated C files predate Python 3.11
# (learn2learn issue #413), so they are regenerated with a current Cython before the
# build. learn2learn 0.2.0 then needs torch with a matching torchvision; gsutil and
# qpth, which it lists, are not needed for what the suite uses (algorithms.MAML).
set -euo pipefail
py="$(command -v "${PYTHON:-python}")"
case "$py" in /*) ;; *) py="$PWD/$py" ;; esac  # the build below runs in another folder
# torch 2.14.1 (a CUDA build) and torchvision take about 5.6 GB in the environment: say so
# before pip runs out of space halfway through replacing the environment's torch, and exit
# with status 75 (EX_TEMPFAIL), which .ci/run reads as "skip the optional peer".
if ! "$py" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.14.1')" 2>/dev/null; then
    prefix="$("$py" -c 'import sys; print(sys.prefix)')"
    need=7000 free=$(df -Pm "$prefix" | awk 'NR == 2 { print $4 }')
    if [ "$free" -lt "$need" ]; then
        echo "install_learn2learn.sh: torch 2.14.1 and learn2learn need about $need MB free under $prefix, which has $free MB: free some space there and run it again" >&2
        exit 75
    fi
fi
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
