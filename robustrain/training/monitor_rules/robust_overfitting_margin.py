"""The first RO rule, kept for comparison: raw validation robust accuracy ``margin`` below its best for ``patience``
epochs. Its false-alarm rate depends on the validation size and the schedule (see results/studies/monitor_cifar10_replay.md)."""
from __future__ import annotations

from typing import Any

from . import History, Rule, register_rule


@register_rule
class RobustOverfittingMargin(Rule):
    """Validation robust accuracy stays more than ``margin`` below its best for ``patience`` consecutive epochs
    (after at least ``min_epochs`` epochs); no statistics, no schedule (false-alarm rate not controlled)."""

    name = "robust_overfitting_margin"
    kind = "robust_overfitting"

    def __init__(self, *, margin: float = 0.03, patience: int = 5, min_epochs: int = 1):
        self.margin, self.patience, self.min_epochs = float(margin), int(patience), int(min_epochs)

    def __call__(self, history: History) -> dict[str, Any] | None:
        values = history.val_robust
        if len(values) < max(self.min_epochs, self.patience + 1):
            return None
        best_idx = max(range(len(values)), key=lambda i: (values[i], -i))  # first epoch reaching the best
        best = values[best_idx]
        if best_idx < len(values) - self.patience and all(v < best - self.margin for v in values[-self.patience:]):
            return {"rule": self.name, "best_val_robust_acc": best, "best_epoch": best_idx + 1,
                    "val_robust_acc": values[-1], "gap": best - values[-1], "epochs_below": self.patience}
        return None

    def message(self, ev: dict[str, Any]) -> str:
        return (f"robust overfitting: validation robust accuracy {ev['val_robust_acc']:.3f} has stayed more than "
                f"{self.margin:.3f} below its best {ev['best_val_robust_acc']:.3f} (epoch {ev['best_epoch']}) for "
                f"{self.patience} epochs; best.pt holds the best model")
