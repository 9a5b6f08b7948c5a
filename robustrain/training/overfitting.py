"""The decision rules of the overfitting monitor: pure functions of the metric history.

Catastrophic overfitting (CO, Wong et al. 2020): robust accuracy under a multi-step attack collapses within a
few iterations while clean (or single-step) accuracy does not; the widening FGSM-vs-PGD gap is its signature.
Robust overfitting (RO, Rice et al. 2020): validation robust accuracy peaks and then stays below its best.
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


def detect_catastrophic(history: Sequence[Check], th: COThresholds = COThresholds()) -> dict[str, Any] | None:
    """The evidence of CO at the last check of ``history`` (with the rule that fired), or None.

    The drop rule compares with earlier checks at the same radius only, so an ε warm-up (robust accuracy
    falls as the radius grows) is not mistaken for a collapse; the gap rule needs no history."""
    if not history:
        return None
    cur = history[-1]
    signals = {"eps": cur.eps, **{f"signal/{k}": v for k, v in cur.signals.items()}}
    past = [c for c in history[:-1] if c.eps == cur.eps]  # running bests at the same radius only
    if past:
        best_pgd = max(c.pgd for c in past)
        clean_drop = max(c.clean for c in past) - cur.clean
        fgsm_drop = max(c.fgsm for c in past) - cur.fgsm
        if best_pgd - cur.pgd > th.drop and (clean_drop <= th.stable or fgsm_drop <= th.stable):
            return {"rule": "pgd_drop", "pgd_acc": cur.pgd, "best_pgd_acc": best_pgd, "pgd_drop": best_pgd - cur.pgd,
                    "clean_acc": cur.clean, "clean_drop": clean_drop, "fgsm_acc": cur.fgsm, "fgsm_drop": fgsm_drop,
                    "fgsm_pgd_gap": cur.fgsm - cur.pgd, **signals}
    if th.gap is not None and cur.fgsm - cur.pgd > th.gap:
        return {"rule": "fgsm_pgd_gap", "pgd_acc": cur.pgd, "fgsm_acc": cur.fgsm, "clean_acc": cur.clean,
                "fgsm_pgd_gap": cur.fgsm - cur.pgd, **signals}
    return None


def detect_robust_overfitting(values: Sequence[float], th: ROThresholds = ROThresholds()) -> dict[str, Any] | None:
    """The evidence of RO in a per-epoch validation robust-accuracy series, or None."""
    if len(values) < max(th.min_epochs, th.patience + 1):
        return None
    best_idx = max(range(len(values)), key=lambda i: (values[i], -i))  # first epoch reaching the best
    best = values[best_idx]
    recent = values[-th.patience:]
    if best_idx < len(values) - th.patience and all(v < best - th.margin for v in recent):
        return {"best_val_robust_acc": best, "best_epoch": best_idx + 1, "val_robust_acc": values[-1],
                "gap": best - values[-1], "epochs_below": th.patience}
    return None
