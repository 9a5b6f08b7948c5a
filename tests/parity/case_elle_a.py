"""ELLE-A, official-code behaviour, on CIFAR-10 (configs/cifar10_elle_a_code.yaml) against LIONS-EPFL/ELLE
core/utils/train.py@0f16c0e with ``--lambda_schedule onoff`` (scripts/run_elle-a_cifar10.sh: λ_max 4000, decay 0.99,
sensitivity 2); the reference loop is in case_elle.py."""
from __future__ import annotations

from .case_elle import run_elle
from .harness import Case


def run():
    return run_elle(CASE, adaptive=True)


CASE = Case(
    recipe="cifar10_elle_a_code",
    official="LIONS-EPFL/ELLE core/utils/train.py@0f16c0e",
    behaviour="code (two optimiser steps per batch, x_adv not clipped, λ updated once per batch; CyclicLR with "
              "momentum cycling; attack forward updates BN statistics); cifar10_elle_a.yaml is the paper's behaviour",
    by_design="triplet and attack draws from robustrain's generator; the official clean forward for its accuracy "
              "metric (one more BN statistics update per batch; buffers asserted in the aligned run without it); "
              "run at ε = 24/255 (an official script setting) so that λ_max triggers within 20 steps",
    run=run,
)
