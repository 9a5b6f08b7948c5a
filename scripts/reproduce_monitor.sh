#!/usr/bin/env bash
# The overfitting monitor's rollback on MNIST (ε = 0.3, small CNN): FGSM training collapses, the monitor declares
# catastrophic overfitting, restores the training state of the last healthy check and continues with N-FGSM.
# The warn-only and healthy runs (FGSM, FGSM-RS, PGD-10, N-FGSM, ELLE-A, three seeds each) are in
# results/studies/monitor_mnist_live.md (scripts/monitor_eval.py live).
# Usage: scripts/reproduce_monitor.sh MNIST_DIR [OUT_DIR]   (MNIST_DIR holds the four official .gz files)
set -euo pipefail
cd "$(dirname "$0")/.."
mnist=${1:?usage: scripts/reproduce_monitor.sh MNIST_DIR [OUT_DIR]}
out=${2:-runs/monitor}
./scripts/setup_env.sh
.venv/bin/robustrain train -c configs/mnist_fgsm_monitor.yaml --set "data.root=$mnist" --set train.progress=false \
  --set wandb.mode=disabled --run-dir "$out/fgsm_rollback_nfgsm"
.venv/bin/python scripts/plot_monitor.py "$out/fgsm_rollback_nfgsm" --out results/studies/monitor_mnist_rollback \
  --title "MNIST, small CNN, ε 0→0.3 over 2 epochs: FGSM with rollback to N-FGSM (held-out check batch)"
