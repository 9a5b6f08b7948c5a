"""Remedies: changes to a running training's composition, built by the builder and applied by the Trainer.

The overfitting monitor decides *when* (a rollback) and calls ``trainer.apply(remedy)``; the remedy says *what*
changes, as pure functions of the current value, and :meth:`robustrain.training.Trainer.apply` is the one place
that assigns them. Each remedy is registered under its ``kind`` (the ``kind`` of a ``monitor.remedy`` section):

* ``lr``: ``{kind: lr, factor: 0.5}`` multiplies the learning-rate scale (not the momentum).
* ``attack``: ``{kind: attack, name: nfgsm, ...options}`` replaces the training attack by another one at the same
  threat model, keeping the recipe's BatchNorm handling and autocast (``bn_mode``, ``update_bn_stats``,
  ``first_batch_bn_mode``, ``amp_dtype``).
* ``regulariser``: ``{kind: regulariser, name: elle_a, ...options}`` adds the loss term (once: a term of that name
  already in the composition is kept).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from ..attacks import Attack, build_attack
from ..errors import ConfigError
from ..registry import Registry
from ..threat import ThreatModel
from .hooks import LossTerm


class Remedy:
    """A change to the composition: each method maps the current value to the new one (default: unchanged)."""

    kind = "remedy"

    def lr_scale(self, scale: float) -> float:
        return scale

    def attack(self, attack: Attack) -> Attack:
        return attack

    def loss_terms(self, terms: Sequence[LossTerm]) -> list[LossTerm]:
        return list(terms)

    def spec(self) -> dict[str, Any]:
        """The config section this remedy was built from (``{kind: ..., ...}``), for event logs and checkpoints."""
        return {"kind": self.kind}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec()})"


REMEDIES: Registry[type[Remedy]] = Registry("monitor remedy kind", key="kind", base=Remedy)
"""The remedies by ``kind``; each is registered at its definition with ``@register_remedy``."""
register_remedy = REMEDIES.register


@register_remedy
class LRRemedy(Remedy):
    """Multiply the learning-rate scale by ``factor``."""

    kind = "lr"

    def __init__(self, *, factor: float = 0.5):
        if not factor > 0:
            raise ConfigError(f"monitor.remedy.factor must be > 0, got {factor}.")
        self.factor = float(factor)

    def lr_scale(self, scale: float) -> float:
        return scale * self.factor

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "factor": self.factor}


@register_remedy
class AttackRemedy(Remedy):
    """Replace the training attack by ``name`` (with ``options``), inheriting the old one's BN handling and
    autocast."""

    kind = "attack"

    def __init__(self, *, name: str, **options: Any):
        self.name, self.options = name, dict(options)

    def attack(self, attack: Attack) -> Attack:
        inherit = {"bn_mode": attack.bn_mode, "amp_dtype": attack.amp_dtype,
                   "update_bn_stats": getattr(attack, "update_bn_stats", False),
                   "first_batch_bn_mode": getattr(attack, "first_batch_bn_mode", None)}
        return build_attack(self.name, attack.threat, **{**inherit, **self.options})

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, **self.options}


@register_remedy
class RegulariserRemedy(Remedy):
    """Add the loss term ``name`` (built by ``build_term(name, threat, **options)``) unless one of that name is
    already there. ``build_term`` is injected by the builder (:func:`robustrain.regularisers.build_regulariser`;
    training does not import the regularisers, which sit above it)."""

    kind = "regulariser"

    def __init__(self, *, name: str, threat: ThreatModel | None = None,
                 build_term: Callable[..., LossTerm] | None = None, **options: Any):
        if build_term is None or threat is None:
            raise ConfigError("the regulariser remedy needs build_term (e.g. robustrain.regularisers.build_regulariser) "
                              "and the threat model to build its loss term; robustrain.build.build_monitor passes them.")
        self.name, self.threat, self.build_term, self.options = name, threat, build_term, dict(options)

    def loss_terms(self, terms: Sequence[LossTerm]) -> list[LossTerm]:
        if any(t.name == self.name for t in terms):
            return list(terms)
        return [*terms, self.build_term(self.name, self.threat, **self.options)]

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, **self.options}


def build_remedy(spec: dict[str, Any] | Remedy, *, threat: ThreatModel | None = None,
                 build_term: Callable[..., LossTerm] | None = None) -> Remedy:
    """A remedy from a ``monitor.remedy`` section ``{kind: ..., ...}`` (a :class:`Remedy` is returned as is).
    ``threat`` and ``build_term`` go to the remedies that take them (the regulariser remedy)."""
    if isinstance(spec, Remedy):
        return spec
    spec = dict(spec)
    kind = spec.pop("kind", None)
    cls = REMEDIES[kind]
    if kind == "lr":  # the others take the options of the attack / regulariser they build
        REMEDIES.check(kind, spec, "monitor.remedy")
    injected = {"threat": threat, "build_term": build_term} if kind == "regulariser" else {}
    return cls(**spec, **injected)


__all__ = ["AttackRemedy", "LRRemedy", "REMEDIES", "RegulariserRemedy", "Remedy", "build_remedy",
           "register_remedy"]
