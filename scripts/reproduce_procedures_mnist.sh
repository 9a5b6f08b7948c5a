#!/usr/bin/env bash
# The training-procedure studies of issue 18 at CPU scale: PGD-AT on configs/mnist_ro_small.yaml (1,000 MNIST
# images, small CNN with BatchNorm, 15 epochs) without a procedure (the baseline, "pgd") and with each variant
# below, for each seed, one run at a time; then the table and plot results/studies/STUDY_mnist/STUDY_mnist.{md,png}
# (scripts/plot_procedure_study.py). The baseline runs are shared by every study (same folder under OUT).
#
#   scripts/reproduce_procedures_mnist.sh STUDY [SEED ...]     # STUDY: wa | fomo | cure; default seeds 0 1
#   MNIST_ROOT=../shared/data/mnist THREADS=2 scripts/reproduce_procedures_mnist.sh wa 0 1
#
# Measured on 2 CPU cores (under the team's CPU lock): about 10 s of training per run plus the test PGD-20 of best
# and last; a whole study in 2-3 min.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MNIST_ROOT=${MNIST_ROOT:-../shared/data/mnist}
OUT=${OUT:-runs/procedures_mnist}
export OMP_NUM_THREADS=${THREADS:-1}
STUDY=${1:?usage: reproduce_procedures_mnist.sh wa|fomo|cure [SEED ...]}
shift
SEEDS=("$@")
if [ ${#SEEDS[@]} -eq 0 ]; then
  SEEDS=(0 1)
fi
declare -A VARIANTS=(
  [wa]="ema swa"
  [fomo]="fomo"
  [cure]="cure"
)
declare -A PROC=(
  [pgd]="[]"
  [ema]="[{name: ema, decay: 0.95, ramp: true}]"
  [swa]="[{name: swa, start_epoch: 7, bn_batches: 5}]"
  [fomo]="[{name: fomo, start_epoch: 5, every: 3, fraction: 0.1, last: 2, decay: 0.99}]"
  [cure]="[{name: cure}]"
)
[ -n "${VARIANTS[$STUDY]:-}" ] || { echo "unknown study $STUDY (wa | fomo | cure)" >&2; exit 2; }
METHODS=(pgd ${VARIANTS[$STUDY]})
RUNS=()
for m in "${METHODS[@]}"; do
  for s in "${SEEDS[@]}"; do
    run="$OUT/${m}_seed$s"
    RUNS+=("${m}_seed$s")
    if [ -f "$run/summary.json" ]; then
      echo "== $m seed $s: $run/summary.json exists, skipped (delete the folder to re-run)"
      continue
    fi
    echo "== $m seed $s"
    rm -rf "$run"
    nice -n 10 "$PY" -m robustrain.cli train -c configs/mnist_ro_small.yaml --run-dir "$run" \
      --set "data.root=$MNIST_ROOT" --set train.progress=false --set wandb.mode=disabled --set "seed=$s" \
      --set "procedures=${PROC[$m]}"
  done
done
"$PY" scripts/plot_procedure_study.py "$OUT" --runs "${RUNS[@]}" --out "results/studies/${STUDY}_mnist/${STUDY}_mnist" \
  --command "MNIST_ROOT=$MNIST_ROOT THREADS=$OMP_NUM_THREADS scripts/reproduce_procedures_mnist.sh $STUDY ${SEEDS[*]}"
