#!/usr/bin/env bash
# The GPU check of issue 19 in one command (see scripts/gpu_check.py for the stages and the report):
#   bash scripts/gpu_check.sh               # on a machine with one CUDA GPU: <= 8 minutes, writes results/gpu/<gpu>.md
#   GPU_CHECK_DRY=1 bash scripts/gpu_check.sh   # every stage tiny on the CPU (what tests/test_gpu_check.py runs)
#   bash scripts/gpu_check.sh --prepare     # here, before a device call: wheels into .whl/, CIFAR-10 parts into .gpu_data/
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ "${1:-}" == "--prepare" ]]; then
    shift
    # .whl/ and .gpu_data/ are git-ignored: they travel to the device only when a call's carry names them
    # torchattacks (the PGD baseline, the default AutoAttack backend) and pyautoattack (the official AutoAttack, a
    # dependency) are not on the device machine's image; both are pure-Python wheels
    for pkg in "torchattacks==3.5.1" "pyautoattack==0.2.0"; do
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "$pkg" \
            || echo "gpu_check --prepare: could not download the $pkg wheel" >&2
    done
    exec "$PY" scripts/gpu_check.py --prepare "$@"
fi
if compgen -G ".whl/*.whl" > /dev/null; then  # carried wheels (device machine: nothing can be fetched there)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site \
        .whl/*.whl && export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
exec "$PY" scripts/gpu_check.py "$@"
