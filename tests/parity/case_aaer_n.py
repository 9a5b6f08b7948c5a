"""N-AAER on CIFAR-10 (configs/cifar10_aaer_n.yaml) against tmllab/2023_NeurIPS_AAER CIFAR10/AAER.py@5ad2591
(``--clamp 0 --alpha 1.00``: start U[−2ε, 2ε], step ε, no projection); the reference loop is in case_aaer_rs.py."""
from __future__ import annotations

from .case_aaer_rs import run_aaer
from .harness import Case


def run():
    return run_aaer(CASE, noise=2.0, project=False)


CASE = Case(
    recipe="cifar10_aaer_n",
    official="tmllab/2023_NeurIPS_AAER CIFAR10/AAER.py@5ad2591",
    behaviour="code (λ2 term detached as in the code; CyclicLR with momentum cycling; both forwards update BN "
              "statistics)",
    by_design="normalisation inside the model with ε, α in pixel units (the script normalises the data and divides "
              "ε, α by σ); random start drawn from robustrain's generator; final model, no checkpoint selection",
    run=run,
)
