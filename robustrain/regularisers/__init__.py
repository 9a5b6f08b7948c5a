"""Regularisers against catastrophic overfitting: loss terms added to the training objective.

Each regulariser is a :class:`robustrain.training.LossTerm` built as ``cls(threat, **options)``, one file each,
registered at its definition with ``@register_regulariser`` in :data:`REGULARISERS` (every module here whose name
does not start with ``_`` is imported with the package):

* ``elle`` / ``elle_a``: local linearity error on random triplets, constant / adaptive λ (ICLR 2024).
* ``gradalign``: input-gradient alignment with double backprop (NeurIPS 2020).
* ``aaer``: abnormal adversarial example regulariser (NeurIPS 2023).
* ``convergesmooth``: benign-loss convergence constraint (ICCV 2023).
* ``weight_centralisation``: pull towards the mean of per-epoch weight snapshots (ICCV 2023, same paper).
"""
from __future__ import annotations

from typing import Any

from ..registry import import_modules
from ..threat import ThreatModel
from ..training.hooks import LossTerm
from .aaer import AAER
from .base import REGULARISERS, register_regulariser
from .convergesmooth import ConvergeSmooth
from .elle import ELLE, ELLEA
from .gradalign import GradAlign
from .weight_centralisation import WeightCentralisation


def build_regulariser(name: str, threat: ThreatModel, **options: Any) -> LossTerm:
    """A fresh regulariser ``name`` (one of :data:`REGULARISERS`); unknown names and options raise with the
    valid choices."""
    return REGULARISERS.build(name, threat, **options)


import_modules(__name__, __path__)  # any further regulariser file registers itself

__all__ = [
    "AAER", "ConvergeSmooth", "ELLE", "ELLEA", "GradAlign", "REGULARISERS", "WeightCentralisation",
    "build_regulariser", "register_regulariser",
]
