"""Regularisers against catastrophic overfitting: loss terms added to the training objective.

Each regulariser is a :class:`robustrain.training.LossTerm` built as ``cls(threat, **options)``.
"""
from __future__ import annotations

from typing import Any

from ..registry import build
from ..threat import ThreatModel
from ..training.hooks import LossTerm

REGULARISERS: dict[str, type[LossTerm]] = {}


def build_regulariser(name: str, threat: ThreatModel, **options: Any) -> LossTerm:
    """A fresh regulariser ``name`` (one of :data:`REGULARISERS`); unknown names and options raise with the
    valid choices."""
    return build("regulariser", REGULARISERS, name, threat, **options)


__all__ = ["REGULARISERS", "build_regulariser"]
