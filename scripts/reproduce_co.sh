#!/usr/bin/env bash
# Catastrophic overfitting and the regularisers of issue 3 on MNIST (ε = 0.3, small CNN), at CPU scale.
# Trains every configs/mnist_<method>.yaml of the study into runs/co_mnist/<method> (metrics.jsonl has the
# per-epoch val_clean_acc / val_robust_acc), evaluates FGSM on the last checkpoint, then writes the table and the
# plot into results/ (co_mnist.md, co_mnist.png).
#
#   scripts/reproduce_co.sh [METHOD ...]        # default: all; e.g. scripts/reproduce_co.sh fgsm elle
#   MNIST_ROOT=../shared/data/mnist THREADS=1 scripts/reproduce_co.sh
#
# Runs one training at a time. Measured on 2 shared CPU cores (Wong MNIST base, 10 epochs): 2–6 minutes of training
# per method plus its test evaluation, ~40 minutes for the set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MNIST_ROOT=${MNIST_ROOT:-../shared/data/mnist}
OUT=${OUT:-runs/co_mnist}
export OMP_NUM_THREADS=${THREADS:-1}
METHODS=("$@")
if [ ${#METHODS[@]} -eq 0 ]; then
  METHODS=(fgsm fgsm_rs nfgsm elle elle_a gradalign aaer convergesmooth)
fi
for m in "${METHODS[@]}"; do
  run="$OUT/$m"
  if [ -f "$run/summary.json" ]; then
    echo "== $m: $run/summary.json exists, skipped (delete the folder to re-run)"
  else
    echo "== $m"
    rm -rf "$run"
    "$PY" -m robustrain.cli train -c "configs/mnist_$m.yaml" --run-dir "$run" \
      --set "data.root=$MNIST_ROOT" --set train.progress=false
  fi
  "$PY" -m robustrain.cli eval "$run" --checkpoint last --attack fgsm --n-ex 1000 --data-root "$MNIST_ROOT" \
    --out "$run/eval_fgsm_last.json" > /dev/null
done
"$PY" scripts/plot_runs.py "$OUT" --methods "${METHODS[@]}" --out results/studies/co_mnist \
  --title "MNIST, ε = 0.3, small CNN: catastrophic overfitting and the regularisers" \
  --command "MNIST_ROOT=$MNIST_ROOT THREADS=$OMP_NUM_THREADS scripts/reproduce_co.sh ${*:-}"
