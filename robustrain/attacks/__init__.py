"""Attacks, one per file, and ``build_attack`` to make one by name."""
from __future__ import annotations

import inspect

from ..errors import ConfigError, closest, unknown_name
from ..threat import ThreatModel
from .base import Attack, AttackResult, LossFn, attack_guard, cross_entropy
from .fgsm import FGSM
from .fgsm_rs import FGSMRS
from .nfgsm import NFGSM
from .pgd import PGD

ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (FGSM, FGSMRS, NFGSM, PGD)}


def attack_arguments(cls: type[Attack]) -> list[str]:
    """Keyword arguments an attack class accepts (its own and the base class's)."""
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.name not in names:
                names.append(p.name)
    return names


def build_attack(name: str, threat: ThreatModel, **kwargs) -> Attack:
    """A fresh attack ``name`` (one of :data:`ATTACKS`) for ``threat``; unknown names and arguments
    raise with the valid choices."""
    if name not in ATTACKS:
        raise unknown_name("attack", name, ATTACKS)
    cls = ATTACKS[name]
    valid = attack_arguments(cls)
    for key in kwargs:
        if key not in valid:
            hint = closest(key, valid)
            raise ConfigError(
                f"attack {name!r} got an unknown argument {key!r}; it accepts: {', '.join(valid)}."
                + (f" Did you mean {hint!r}?" if hint else "")
            )
    return cls(threat, **kwargs)


__all__ = [
    "ATTACKS", "Attack", "AttackResult", "FGSM", "FGSMRS", "LossFn", "NFGSM", "PGD",
    "attack_arguments", "attack_guard", "build_attack", "cross_entropy",
]
