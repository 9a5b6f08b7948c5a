"""Attacks, one per file (each registered at its definition with ``@register_attack`` in :data:`ATTACKS`; every
module here whose name does not start with ``_`` is imported with the package), and ``build_attack`` to make one by
name."""
from __future__ import annotations

from ..registry import import_modules, keyword_arguments
from ..threat import ThreatModel
from .base import ATTACKS, Attack, AttackResult, LossFn, attack_guard, cross_entropy, register_attack
from .beta import BETA
from .cw import CW, cw_margin
from .fgsm import FGSM
from .fgsm_mep import FGSMMEP
from .fgsm_rs import FGSMRS
from .nfgsm import NFGSM
from .pgd import PGD
from .trades import TRADESAttack, kl_from_clean


def attack_arguments(cls: type[Attack]) -> list[str]:
    """Keyword arguments an attack class accepts (its own and the base class's)."""
    return list(keyword_arguments(cls))


def build_attack(name: str, threat: ThreatModel, **kwargs) -> Attack:
    """A fresh attack ``name`` (one of :data:`ATTACKS`) for ``threat``; unknown names and arguments
    raise with the valid choices."""
    return ATTACKS.build(name, threat, **kwargs)


import_modules(__name__, __path__)  # any further attack file registers itself

__all__ = [
    "ATTACKS", "Attack", "AttackResult", "BETA", "CW", "FGSM", "FGSMMEP", "FGSMRS", "LossFn", "NFGSM", "PGD", "TRADESAttack",
    "attack_arguments", "attack_guard", "build_attack", "cross_entropy", "cw_margin", "kl_from_clean", "register_attack",
]
