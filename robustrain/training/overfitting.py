"""The decision rules of the overfitting monitor: pure functions of the metric history.

Catastrophic overfitting (CO, Wong et al. 2020): robust accuracy under a multi-step attack collapses within a
few iterations while clean (or single-step) accuracy does not; the widening FGSM-vs-PGD gap is its signature.
Robust overfitting (RO, Rice et al. 2020): validation robust accuracy peaks and then stays below its best.

The rules themselves are registered objects in :mod:`.monitor_rules` (one file each, with their statistics); the
functions here are the original entry points, kept for scripted histories and old callers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence


@dataclass(frozen=True)
class Check:
    """One CO check on the fixed held-out batch (accuracies in [0,1])."""

    step: int
    epoch: int
    clean: float
    fgsm: float
    pgd: float
    signals: dict[str, float] = field(default_factory=dict)
    eps: float = 0.0  # the radius the check attacked with (changes during an ε warm-up)
    n: int | None = None  # images in the check batch (None: unknown; the rules then use their floors alone)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class COThresholds:
    """CO is declared when PGD accuracy falls more than ``drop`` below its running best while clean or FGSM
    accuracy stays within ``stable`` of its own best (if everything falls, the run diverged instead; Wong et
    al. stop at a drop of more than 20 points), or when FGSM accuracy exceeds PGD accuracy by more than
    ``gap`` (the signature of CO: the single-step attack no longer finds what the multi-step one finds; this
    also catches runs that collapse before PGD accuracy ever rose). ``gap=None`` turns the second rule off."""

    drop: float = 0.2
    stable: float = 0.2
    gap: float | None = 0.3


@dataclass(frozen=True)
class ROThresholds:
    """RO is declared when validation robust accuracy stays more than ``margin`` below its best for
    ``patience`` consecutive epochs (after at least ``min_epochs`` epochs)."""

    margin: float = 0.03
    patience: int = 5
    min_epochs: int = 1


def co_rules(th: COThresholds = COThresholds(), false_alarm: float = 0.01, horizon: int = 100,
             healthy_gap: float = 0.2) -> list:
    """The catastrophic-overfitting rules of ``th``: pgd_drop, then fgsm_pgd_gap (unless ``th.gap`` is None)."""
    from .monitor_rules import build_rule

    rules = [build_rule({"name": "pgd_drop", "drop": th.drop, "stable": th.stable, "false_alarm": false_alarm,
                         "horizon": horizon})]
    if th.gap is not None:
        rules.append(build_rule({"name": "fgsm_pgd_gap", "gap": th.gap, "healthy_gap": healthy_gap,
                                 "false_alarm": false_alarm, "horizon": horizon}))
    return rules


def detect_catastrophic(history: Sequence[Check], th: COThresholds = COThresholds()) -> dict[str, Any] | None:
    """The evidence of CO at the last check of ``history`` (with the rule that fired), or None.

    The drop rule compares with earlier checks at the same radius only, so an ε warm-up (robust accuracy
    falls as the radius grows) is not mistaken for a collapse; the gap rule needs no history. Checks that carry
    their set size ``n`` get the statistical thresholds of :mod:`.monitor_rules`; others the floors in ``th``."""
    from .monitor_rules import History

    if not history:
        return None
    cur = history[-1]
    hist = History(checks=list(history))
    for rule in co_rules(th):
        evidence = rule(hist)
        if evidence is not None:
            return {**evidence, "eps": cur.eps, **{f"signal/{k}": v for k, v in cur.signals.items()}}
    return None


def detect_robust_overfitting(values: Sequence[float], th: ROThresholds = ROThresholds()) -> dict[str, Any] | None:
    """The evidence of RO in a per-epoch validation robust-accuracy series by the original margin rule (no
    statistics, no schedule; :class:`~.monitor_rules.robust_overfitting.RobustOverfitting` is the monitor's
    default), or None."""
    from .monitor_rules import History, build_rule

    rule = build_rule({"name": "robust_overfitting_margin", "margin": th.margin, "patience": th.patience,
                       "min_epochs": th.min_epochs})
    evidence = rule(History(val_robust=list(values)))
    if evidence is not None:
        evidence.pop("rule")
    return evidence
