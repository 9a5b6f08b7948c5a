#!/usr/bin/env bash
# Robust overfitting and weight perturbation (issue 4) at CPU scale: PGD-AT, PGD-AT + AWP and PGD-AT + RWP (the
# papers' γ = 0.01, RWP c_min 1.7 and 10 steps) on the small CIFAR-10 setting of configs/cifar10_ro_small.yaml
# (500 training images, small CNN, 50 epochs), plus AWP with a 5x larger γ (0.05, not a paper value: how the gap
# responds to the perturbation's size), one run at a time, then the table and plot results/studies/ro_cifar10.{md,png}
# (best-vs-last gap of each).
#
#   scripts/reproduce_ro.sh [METHOD ...]        # default: pgd awp rwp awp_gamma0.05
#   CIFAR_ROOT=data/cifar10 THREADS=1 scripts/reproduce_ro.sh
#
# Measured on 2 shared CPU cores (load ≈ 6): about 3 min of training for pgd, 4 for awp, 15 for rwp.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CIFAR_ROOT=${CIFAR_ROOT:-data/cifar10}
OUT=${OUT:-runs/ro_cifar10}
export OMP_NUM_THREADS=${THREADS:-1}
METHODS=("$@")
if [ ${#METHODS[@]} -eq 0 ]; then
  METHODS=(pgd awp rwp awp_gamma0.05)
fi
declare -A WP=(
  [pgd]="null"
  [awp]="{name: awp, gamma: 0.01}"
  [rwp]="{name: rwp, gamma: 0.01, c_min: 1.7, steps: 10}"
  [awp_gamma0.05]="{name: awp, gamma: 0.05}"
)
for m in "${METHODS[@]}"; do
  run="$OUT/$m"
  if [ -f "$run/summary.json" ]; then
    echo "== $m: $run/summary.json exists, skipped (delete the folder to re-run)"
    continue
  fi
  echo "== $m"
  rm -rf "$run"
  nice -n 10 "$PY" -m robustrain.cli train -c configs/cifar10_ro_small.yaml --run-dir "$run" \
    --set "data.root=$CIFAR_ROOT" --set train.progress=false --set wandb.mode=disabled \
    --set "weight_perturbation=${WP[$m]}"
done
"$PY" scripts/plot_ro.py "$OUT" --methods "${METHODS[@]}" --out results/studies/ro_cifar10 \
  --command "CIFAR_ROOT=$CIFAR_ROOT THREADS=$OMP_NUM_THREADS scripts/reproduce_ro.sh ${*:-}"
