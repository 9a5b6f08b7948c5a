"""Weight perturbation (AWP, RWP, LAP): the context the Trainer's optimiser step runs in.

Each is a :class:`robustrain.training.WeightPerturbation` built as ``cls(threat, **options)``, one file each,
registered at its definition with ``@register_weight_perturbation`` in :data:`WEIGHT_PERTURBATIONS` (every module
here whose name does not start with ``_`` is imported with the package):

* ``awp``: one ascent step, per-layer radius γ‖w_l‖, removed after the update (NeurIPS 2020).
* ``rwp``: ascent on the low-loss examples only (loss stationary condition), global scaling (IJCAI 2022).
* ``lap``: layer-aware perturbation λ_l = 1 − (ln l / ln L)^γ for single-step training (ICML 2024).

Which parameters are perturbed is an explicit rule (``modules`` kinds and ``params`` names, default conv and
linear weights; see ``selection.py``).
"""
from __future__ import annotations

from typing import Any

from ..registry import import_modules
from ..threat import ThreatModel
from ..training.hooks import WeightPerturbation
from .awp import AWP
from .base import (WEIGHT_PERTURBATIONS, Perturbation, perturbed, register_weight_perturbation,
                   running_stats_frozen)
from .lap import LAP, LAP_BETA, lap_default_beta, lap_factors
from .rwp import RWP, lsc_mask
from .selection import MODULE_KINDS, ParameterRule


def build_weight_perturbation(name: str, threat: ThreatModel, **options: Any) -> WeightPerturbation:
    """A fresh weight perturbation ``name`` (one of :data:`WEIGHT_PERTURBATIONS`); unknown names and options
    raise with the valid choices."""
    return WEIGHT_PERTURBATIONS.build(name, threat, **options)


import_modules(__name__, __path__)  # any further weight perturbation file registers itself

__all__ = [
    "AWP", "LAP", "LAP_BETA", "MODULE_KINDS", "ParameterRule", "Perturbation", "RWP", "WEIGHT_PERTURBATIONS",
    "build_weight_perturbation", "lap_default_beta", "lap_factors", "lsc_mask", "perturbed",
    "register_weight_perturbation", "running_stats_frozen",
]
