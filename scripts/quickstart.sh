#!/usr/bin/env bash
# The main job: set up .venv, train a small CNN with FGSM-RS on scikit-learn's bundled digits (no download),
# evaluate the best and last checkpoints with PGD-50-10 on the test split, print the table.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup_env.sh
run_dir="runs/quickstart_digits-$(date +%Y%m%d-%H%M%S)"
exec .venv/bin/robustrain train -c configs/quickstart_digits.yaml --run-dir "$run_dir" "$@"
