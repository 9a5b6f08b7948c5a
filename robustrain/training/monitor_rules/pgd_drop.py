"""CO rule: PGD accuracy on the check batch collapses while clean or FGSM accuracy holds (Wong et al. 2020)."""
from __future__ import annotations

import math
from typing import Any

from . import History, Rule, register_rule
from ._stats import binomial_se, calibrated_z


@register_rule
class PGDDrop(Rule):
    """PGD accuracy fell below its running best (same radius) by more than the threshold while clean or FGSM accuracy
    stayed within ``stable`` of its own best (if everything falls, the run diverged instead).

    Threshold: ``max(drop, z * sqrt(2) * SE + 1/n)``, SE the binomial error on ``n`` check images at the mean of the
    best and the current PGD accuracy, 1/n for the discreteness of a count, and z :func:`~._stats.calibrated_z` (window 1) for ``false_alarm`` over the run's planned checks (``horizon``
    when those are unknown): a run whose PGD accuracy stays flat raises a false alarm with probability at most
    ``false_alarm`` from the noise of the check batch. Wong et al. stop at a drop of 20 points (``drop`` 0.2).

    Healthy check (a rollback target): the drop from the running best is at most half the threshold.
    """

    name = "pgd_drop"
    kind = "catastrophic_overfitting"

    def __init__(self, *, drop: float = 0.2, stable: float = 0.2, false_alarm: float = 0.01, horizon: int = 100):
        self.drop, self.stable = float(drop), float(stable)
        self.false_alarm, self.horizon = float(false_alarm), int(horizon)

    def threshold(self, history: History, best: float) -> float:
        cur = history.checks[-1]
        n = cur.n
        if not n or self.drop < 0:  # a negative floor declares at every comparison (tests force decisions so)
            return self.drop
        z = calibrated_z(1, 1, self.false_alarm, history.checks_planned or self.horizon)
        pooled = (best + cur.pgd) / 2  # under no change both measure one accuracy
        return max(self.drop, z * math.sqrt(2.0) * binomial_se(pooled, n) + 1.0 / n)  # + 1/n: discreteness

    def _measure(self, history: History) -> dict[str, Any] | None:
        if not history.checks:
            return None
        cur = history.checks[-1]
        past = [c for c in history.checks[:-1] if c.eps == cur.eps]  # running bests at the same radius only
        if not past:
            return None
        best = max(c.pgd for c in past)
        return {"pgd_acc": cur.pgd, "best_pgd_acc": best, "pgd_drop": best - cur.pgd,
                "clean_acc": cur.clean, "clean_drop": max(c.clean for c in past) - cur.clean,
                "fgsm_acc": cur.fgsm, "fgsm_drop": max(c.fgsm for c in past) - cur.fgsm,
                "fgsm_pgd_gap": cur.fgsm - cur.pgd, "threshold": self.threshold(history, best)}

    def __call__(self, history: History) -> dict[str, Any] | None:
        ev = self._measure(history)
        if ev is None or ev["pgd_drop"] <= ev["threshold"]:
            return None
        if ev["clean_drop"] > self.stable and ev["fgsm_drop"] > self.stable:
            return None
        return {"rule": self.name, **ev}

    def healthy(self, history: History) -> bool:
        ev = self._measure(history)
        return ev is None or ev["pgd_drop"] <= ev["threshold"] / 2

    def message(self, ev: dict[str, Any]) -> str:
        return (f"catastrophic overfitting: PGD accuracy on the held-out check batch fell from {ev['best_pgd_acc']:.3f} "
                f"to {ev['pgd_acc']:.3f} (threshold {ev['threshold']:.3f}) while FGSM accuracy is {ev['fgsm_acc']:.3f} "
                f"and clean accuracy {ev['clean_acc']:.3f}")
