"""RO rule: the smoothed validation robust accuracy has fallen significantly below its smoothed best, after the
first learning-rate decay (Rice et al. 2020: robust overfitting sets in after the decay; before it, at a high
learning rate, the curve only fluctuates)."""
from __future__ import annotations

import math
from typing import Any

from . import History, Rule, register_rule
from ._stats import best_window_drops, binomial_se, calibrated_z, first_decay, window_means


@register_rule
class RobustOverfitting(Rule):
    """Validation robust accuracy, averaged over ``window`` epochs, is below the best earlier ``window``-epoch average
    (the two windows disjoint) by more than the threshold for ``patience`` consecutive epochs.

    Threshold: ``max(margin, z * sqrt(2 / window) * SE)``, SE the binomial error of one epoch's accuracy on the
    ``n_val`` validation images (at the two windows' mean), z :func:`~._stats.calibrated_z` for ``false_alarm`` over
    the epochs the rule watches: a curve that stays flat while watched raises a false alarm with probability at most
    ``false_alarm``. Watched epochs: with ``after_decay`` (default) only those after the first learning-rate decay
    (the schedule's lr at an epoch's end at most half its largest value so far; from ``History.arm_epoch``, which
    the monitor computes from the schedule, a schedule that never decays being watched throughout), so nothing is
    declared on the high-lr plateau; ``after_decay: false`` watches from the first epoch. The best and the current
    window both lie in the watched epochs.
    """

    name = "robust_overfitting"
    kind = "robust_overfitting"

    def __init__(self, *, window: int = 10, patience: int = 1, margin: float = 0.01, false_alarm: float = 0.01,
                 after_decay: bool = True, horizon: int = 100):
        if window < 1 or patience < 1:
            raise ValueError(f"{self.name}: window and patience must be >= 1, got {window}, {patience}")
        self.window, self.patience, self.margin = int(window), int(patience), float(margin)
        self.false_alarm, self.after_decay, self.horizon = float(false_alarm), bool(after_decay), int(horizon)

    def arm_epoch(self, history: History) -> int:
        """Epochs up to and including this one are not watched."""
        if not self.after_decay:
            return 0
        if history.arm_epoch is not None:
            return history.arm_epoch
        decay = first_decay(history.lr)
        return decay if decay is not None else len(history.val_robust)  # not decayed yet: watch nothing so far

    def z(self, history: History, arm: int) -> float:
        horizon = history.epochs - arm if history.epochs else self.horizon
        return calibrated_z(self.window, self.patience, self.false_alarm, max(horizon, 1))

    def statistic(self, history: History) -> list[dict[str, Any]]:
        """Per watched epoch (with two disjoint windows): the smoothed drop and its threshold."""
        arm = self.arm_epoch(history)
        values = list(history.val_robust[arm:])
        w = self.window
        if len(values) < 2 * w:
            return []
        means = window_means(values, w)
        z = self.z(history, arm) if history.n_val else None
        out = []
        for t, s, drop in best_window_drops(means, w):
            th = self.margin
            if z is not None:
                pooled = (means[s] + means[t]) / 2
                th = max(th, z * math.sqrt(2.0 / w) * binomial_se(pooled, history.n_val))
            out.append({"epoch": arm + t + w, "best_epoch": arm + s + w, "smoothed": means[t], "best_smoothed": means[s],
                        "drop": drop, "threshold": th})
        return out

    def __call__(self, history: History) -> dict[str, Any] | None:
        stats = self.statistic(history)
        if len(stats) < self.patience or stats[-1]["epoch"] != len(history.val_robust):
            return None
        recent = stats[-self.patience:]
        if not all(r["drop"] > r["threshold"] for r in recent):
            return None
        last = recent[-1]
        best_epoch = max(range(len(history.val_robust)), key=lambda i: (history.val_robust[i], -i)) + 1
        return {"rule": self.name, "val_robust_acc": history.val_robust[-1], "smoothed_val_robust_acc": last["smoothed"],
                "best_smoothed_val_robust_acc": last["best_smoothed"], "smoothed_drop": last["drop"],
                "threshold": last["threshold"], "window": self.window, "best_window_end_epoch": last["best_epoch"],
                "best_val_robust_acc": max(history.val_robust), "best_epoch": best_epoch,
                "watched_after_epoch": self.arm_epoch(history), **self.extra_fields(last)}

    def extra_fields(self, last: dict[str, Any]) -> dict[str, Any]:
        """What a variant adds to the declaration from its last statistic (nothing here)."""
        return {}

    def message(self, ev: dict[str, Any]) -> str:
        return (f"robust overfitting: validation robust accuracy averaged over {ev['window']} epochs is "
                f"{ev['smoothed_val_robust_acc']:.3f}, {ev['smoothed_drop']:.3f} below its best average "
                f"{ev['best_smoothed_val_robust_acc']:.3f} (epochs to {ev['best_window_end_epoch']}; threshold "
                f"{ev['threshold']:.3f}); best epoch {ev['best_epoch']} ({ev['best_val_robust_acc']:.3f}), held in best.pt")
