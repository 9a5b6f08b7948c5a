#!/usr/bin/env bash
# Create the virtual environment .venv and install robustrain with its test extras into it.
# Idempotent: a second call only reinstalls when setup.cfg changed. Set PYTHON to choose the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "robustrain: creating .venv with $($PY --version 2>&1)" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.robustrain-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "robustrain: installing torch, torchvision, timm, torchattacks, wandb, ... (a few minutes the first time)" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
  # robustbench (tests of eval --model robustbench:NAME) without its pins (timm==1.0.9, gdown==5.1.0): its
  # import-time dependencies are in the dev extra; users get it with pip install robustrain[robustbench]
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "robustbench>=1.1"
  touch "$stamp"
fi
