"""The overfitting monitor's decision rules: registered objects, pure functions of a :class:`History`.

A rule is one file in this package: a :class:`Rule` subclass decorated with :func:`register_rule`; every module
here whose name does not start with ``_`` is imported when the package is, so adding a rule is adding its file.
A rule's ``__call__(history)`` returns the evidence of a declaration (a dict of numbers and strings) or None;
catastrophic-overfitting rules also say whether a check is *healthy* (the criterion a rollback snapshot must
meet, stated in each rule's docstring).

Each rule's threshold is an effect floor (a number of accuracy points) or a bound computed from the binomial
sampling error of the set it reads (``n_check`` images for a check, ``val_size`` for validation), whichever is
larger, so its false-alarm rate is a stated number (``false_alarm`` over ``horizon`` decisions; see
:mod:`._stats`) rather than an accident of the set size. Where ``n`` is unknown (``Check.n`` None) only the floor
applies.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ...registry import Registry, import_modules
from ..overfitting import Check

KINDS = ("catastrophic_overfitting", "robust_overfitting")


@dataclass(frozen=True)
class History:
    """What the monitor has seen, as the rules read it.

    checks: the CO checks so far (each with its set size ``n``).
    val_robust: validation robust accuracy per finished epoch (epoch ``i + 1`` at index ``i``).
    lr: the schedule's learning rate at the end of each finished epoch (same indexing; what the epoch after it
        starts with).
    n_val: images in the validation set (None: unknown, the floors alone apply).
    arm_epoch: robust-overfitting rules read only epochs after this one (the first lr decay, from the schedule);
        None: derived from ``lr`` (:func:`~._stats.first_decay`).
    epochs: epochs planned (for the false-alarm horizon); None: unknown.
    checks_planned: CO checks planned (for the false-alarm horizon); None: unknown.
    val_flags: per finished epoch, the validation images' robust flags (a bool tensor, the same images in the same
        order every epoch; same indexing as ``val_robust``), for rules that pair the epochs image by image; empty
        when the trainer gives none.
    """

    checks: Sequence[Check] = ()
    val_robust: Sequence[float] = ()
    lr: Sequence[float] = ()
    n_val: int | None = None
    arm_epoch: int | None = None
    epochs: int | None = None
    checks_planned: int | None = None
    val_flags: Sequence[Any] = ()
    extras: dict[str, Any] = field(default_factory=dict)


class Rule:
    """A decision rule. ``kind``: ``catastrophic_overfitting`` (read after each check) or ``robust_overfitting``
    (read after each validation)."""

    name = "rule"
    kind = "catastrophic_overfitting"

    def __call__(self, history: History) -> dict[str, Any] | None:
        raise NotImplementedError

    def healthy(self, history: History) -> bool:
        """Whether the last check is healthy by this rule's stated criterion (default: the rule does not fire)."""
        return self(history) is None

    def message(self, evidence: dict[str, Any]) -> str:
        """One sentence for the event log."""
        return f"{self.kind.replace('_', ' ')} ({self.name}): " + ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in evidence.items())

    def describe(self) -> str:
        """What the rule declares and its stated false-alarm rate."""
        return self.__doc__.strip().splitlines()[0] if self.__doc__ else self.name


def _check_kind(name: str, cls: type[Rule]) -> None:
    if cls.kind not in KINDS:
        raise ValueError(f"monitor rule {name!r}: kind {cls.kind!r} is not one of {KINDS}")


RULES: Registry[type[Rule]] = Registry("monitor rule", base=Rule, validate=_check_kind)
"""The monitor rules by name; each is registered at its definition with ``@register_rule``."""
register_rule = RULES.register


def build_rule(spec: str | dict[str, Any], **defaults: Any) -> Rule:
    """A rule from a name or ``{name: ..., option: value}``; ``defaults`` fill the options the rule accepts and
    the spec does not set (e.g. the monitor's ``false_alarm``)."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    valid = RULES.check(name, spec, "monitor.rules")
    options = {k: v for k, v in defaults.items() if k in valid and v is not None}
    options.update(spec)
    return RULES[name](**options)


import_modules(__name__, __path__)

__all__ = ["History", "KINDS", "RULES", "Rule", "build_rule", "register_rule"]
