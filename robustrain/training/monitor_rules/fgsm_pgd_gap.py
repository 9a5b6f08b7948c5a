"""CO rule: the single-step attack no longer finds what the multi-step one finds (FGSM accuracy >> PGD accuracy)."""
from __future__ import annotations

from typing import Any

from . import History, Rule, register_rule
from ._stats import binomial_upper_threshold


@register_rule
class FGSMPGDGap(Rule):
    """FGSM accuracy exceeds PGD accuracy on the check batch by more than the threshold (the signature of CO; also
    catches runs that collapse before PGD accuracy ever rose).

    Threshold: ``max(gap, the exact binomial upper bound of healthy_gap)``: the gap is the share of the ``n`` check
    images that FGSM leaves correct and PGD breaks, a binomial proportion; the bound keeps the chance that a run
    whose true gap stays at ``healthy_gap`` (a healthy N-FGSM MNIST run measured 0.207 at ε = 0.3) crosses the
    threshold anywhere in the planned checks (``horizon`` when unknown) at ``false_alarm`` (Šidák over
    independent checks).

    Healthy check: the gap is at most half-way from ``healthy_gap`` to the threshold.
    """

    name = "fgsm_pgd_gap"
    kind = "catastrophic_overfitting"

    def __init__(self, *, gap: float = 0.3, healthy_gap: float = 0.2, false_alarm: float = 0.01, horizon: int = 100):
        self.gap, self.healthy_gap = float(gap), float(healthy_gap)
        self.false_alarm, self.horizon = float(false_alarm), int(horizon)

    def threshold(self, history: History) -> float:
        n = history.checks[-1].n
        if not n or self.gap < 0:  # a negative floor declares at every check (tests force decisions so)
            return self.gap
        horizon = history.checks_planned or self.horizon
        per_check = 1.0 - (1.0 - self.false_alarm) ** (1.0 / max(1, horizon))
        return max(self.gap, binomial_upper_threshold(n, self.healthy_gap, per_check))

    def __call__(self, history: History) -> dict[str, Any] | None:
        if not history.checks:
            return None
        cur = history.checks[-1]
        th = self.threshold(history)
        if cur.fgsm - cur.pgd <= th:
            return None
        return {"rule": self.name, "pgd_acc": cur.pgd, "fgsm_acc": cur.fgsm, "clean_acc": cur.clean,
                "fgsm_pgd_gap": cur.fgsm - cur.pgd, "threshold": th}

    def healthy(self, history: History) -> bool:
        if not history.checks:
            return True
        cur = history.checks[-1]
        th = self.threshold(history)
        return cur.fgsm - cur.pgd <= min(th, (self.healthy_gap + th) / 2)

    def message(self, ev: dict[str, Any]) -> str:
        return (f"catastrophic overfitting: FGSM accuracy exceeds PGD accuracy on the held-out check batch by "
                f"{ev['fgsm_pgd_gap']:.3f} (threshold {ev['threshold']:.3f}); PGD accuracy is {ev['pgd_acc']:.3f} "
                f"while FGSM accuracy is {ev['fgsm_acc']:.3f} and clean accuracy {ev['clean_acc']:.3f}")
