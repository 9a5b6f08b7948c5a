"""N-LAP (start U[−2ε, 2ε], step ε, no projection), official-code behaviour, on CIFAR-10
(configs/cifar10_lap_nfgsm.yaml) against tmllab/2024_ICML_LAP CIFAR10/LAP.py@5a4bd23; the reference loop is in
case_lap_rs.py."""
from __future__ import annotations

from .case_lap_rs import CASE as _RS, run_lap
from .harness import Case


def run():
    return run_lap(CASE, "nfgsm")


CASE = Case(recipe="cifar10_lap_nfgsm", official=_RS.official, behaviour=_RS.behaviour, by_design=_RS.by_design,
            run=run)
