#!/usr/bin/env bash
# The overfitting monitor on MNIST (ε = 0.3, small CNN): three runs and a plot.
#   1. FGSM with the monitor warning only: catastrophic overfitting is declared, the run ends non-robust.
#   2. FGSM with rollback + N-FGSM remedy: the run ends robust.
#   3. N-FGSM from the start (healthy): the monitor declares nothing.
# Usage: scripts/reproduce_monitor.sh MNIST_DIR [OUT_DIR]   (MNIST_DIR holds the four official .gz files)
set -euo pipefail
cd "$(dirname "$0")/.."
mnist=${1:?usage: scripts/reproduce_monitor.sh MNIST_DIR [OUT_DIR]}
out=${2:-runs/monitor}
./scripts/setup_env.sh
common=(-c configs/mnist_fgsm_monitor.yaml --set "data.root=$mnist" --set train.progress=false)
.venv/bin/robustrain train "${common[@]}" --run-dir "$out/fgsm_warn" --set monitor.action=warn
.venv/bin/robustrain train "${common[@]}" --run-dir "$out/fgsm_rollback_nfgsm"
.venv/bin/robustrain train "${common[@]}" --run-dir "$out/nfgsm_healthy" --set monitor.action=warn \
  --set "attack={name: nfgsm, bn_mode: train}"
.venv/bin/python scripts/plot_monitor.py "$out/fgsm_warn" "$out/fgsm_rollback_nfgsm" "$out/nfgsm_healthy" \
  --out results/studies/monitor_mnist --title "MNIST, small CNN, ε 0→0.3 over 2 epochs: held-out check batch"
