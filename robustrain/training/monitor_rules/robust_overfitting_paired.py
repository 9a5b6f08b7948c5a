"""RO rule on paired per-example flags: the monitor validates the SAME images after every epoch, so the decline from
the best window to the current one is measured image by image, and its noise is that of the images whose robust flag
changed between the models, not the binomial noise of an independent sample (which
:class:`~.robust_overfitting.RobustOverfitting` assumes)."""
from __future__ import annotations

import math
from typing import Any

import torch

from . import History, register_rule
from .robust_overfitting import RobustOverfitting


@register_rule
class RobustOverfittingPaired(RobustOverfitting):
    """Validation robust accuracy, averaged over ``window`` epochs, is below the best earlier ``window``-epoch average
    (disjoint windows) by more than the threshold for ``patience`` consecutive epochs, tested on the per-example flags.

    Statistic: for each validation image i, ``d_i`` = its robust rate over the best window minus its robust rate over
    the current window; the drop is ``mean(d)`` and its standard error ``sd(d) / sqrt(n)`` (a paired-difference z;
    with ``window`` 1 it is McNemar's test on the discordant images). Threshold: ``max(margin, z * SE)`` with z
    :func:`~._stats.calibrated_z` for ``false_alarm`` over the watched epochs (the same calibration as the unpaired
    rule: under a flat curve whose flags change independently from epoch to epoch the z statistic has the
    distribution that calibration simulates; results/studies/monitor_cifar10_replay_paired.md measures it under
    flags that persist across epochs). Where an image's flags never change, it adds nothing to the noise.

    Watched epochs as :class:`~.robust_overfitting.RobustOverfitting` (after the schedule's first lr decay unless
    ``after_decay: false``). Needs ``History.val_flags`` (the monitor records the validation's per-example flags);
    without them, or when they do not cover the watched epochs, it declares nothing.
    """

    name = "robust_overfitting_paired"
    kind = "robust_overfitting"

    def __init__(self, *, window: int = 5, patience: int = 1, margin: float = 0.01, false_alarm: float = 0.01,
                 after_decay: bool = True, horizon: int = 100):
        super().__init__(window=window, patience=patience, margin=margin, false_alarm=false_alarm,
                         after_decay=after_decay, horizon=horizon)

    def statistic(self, history: History) -> list[dict[str, Any]]:
        """Per watched epoch (with two disjoint windows): the paired drop, its standard error and threshold."""
        arm = self.arm_epoch(history)
        flags = list(history.val_flags[arm:])
        w = self.window
        if len(flags) < 2 * w or len(history.val_flags) != len(history.val_robust):
            return []
        f = torch.stack([torch.as_tensor(x).reshape(-1) for x in flags]).to(torch.float64)  # (epochs, n)
        n = f.shape[1]
        c = torch.cat([torch.zeros(1, n, dtype=f.dtype), f.cumsum(0)])
        rates = (c[w:] - c[:-w]) / w                         # (epochs - w + 1, n): each image's rate per window
        means = rates.mean(1)
        t = torch.arange(w, len(means))
        best = means[: len(means) - w].cummax(0).indices     # best window ending at least w epochs before t's
        d = rates[best] - rates[t]                           # (windows, n): paired differences
        drop = d.mean(1)
        se = d.std(1, unbiased=True) / math.sqrt(n) if n > 1 else torch.zeros_like(drop)
        z = self.z(history, arm)
        th = torch.clamp(z * se, min=self.margin)
        return [{"epoch": arm + int(ti) + w, "best_epoch": arm + int(s) + w, "smoothed": float(means[ti]),
                 "best_smoothed": float(means[s]), "drop": float(dr), "se": float(e), "threshold": float(h),
                 "discordant": int((dd != 0).sum())}
                for ti, s, dr, e, h, dd in zip(t, best, drop, se, th, d)]

    def extra_fields(self, last: dict[str, Any]) -> dict[str, Any]:
        return {"paired_se": last["se"], "discordant_images": last["discordant"]}

    def message(self, ev: dict[str, Any]) -> str:
        return (f"robust overfitting: validation robust accuracy averaged over {ev['window']} epochs is "
                f"{ev['smoothed_val_robust_acc']:.3f}, {ev['smoothed_drop']:.3f} below its best average "
                f"{ev['best_smoothed_val_robust_acc']:.3f} (epochs to {ev['best_window_end_epoch']}; paired on the same "
                f"images, standard error {ev['paired_se']:.4f}, threshold {ev['threshold']:.3f}); best epoch "
                f"{ev['best_epoch']} ({ev['best_val_robust_acc']:.3f}), held in best.pt")
