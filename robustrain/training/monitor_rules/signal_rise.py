"""CO rule on a declared early-warning signal: it jumps above its own running baseline (default: AAER's abnormal
adversarial example rate, the share of training examples whose loss the single-step attack *lowers*, which rises
when catastrophic overfitting sets in; Lin et al. 2023)."""
from __future__ import annotations

import statistics
from typing import Any

from . import History, Rule, register_rule


@register_rule
class SignalRise(Rule):
    """A declared signal (``signal``: a loss term's signal name such as ``aae_rate`` or ``e_lin``, matched as
    ``<term>/<signal>``, or a monitor signal such as ``grad_alignment``) averaged since the previous check exceeds
    ``max(floor, factor × baseline)`` for ``patience`` consecutive checks, the baseline being the median of the signal
    over the ``baseline`` checks before them (at least ``baseline`` such checks are needed; fewer: no decision).

    The signal is an average over every training example between two checks (thousands), so its sampling error is
    negligible beside the effect floors: ``factor`` and ``floor`` are effect sizes, and the false-alarm rate is the one
    measured on recorded healthy runs (results/studies/monitor_signals_mnist.md), not a derived number. A run whose
    loss terms do not declare the signal gets no decision from this rule (``regularisers: [{name: aaer, lam1: 0,
    lam2: 0, lam3: 0}]`` measures the abnormal rate without regularising).

    Healthy check: the signal is at most half-way from the baseline to the threshold (or there is no baseline yet).
    """

    name = "signal_rise"
    kind = "catastrophic_overfitting"

    def __init__(self, *, signal: str = "aae_rate", factor: float = 3.0, floor: float = 0.05, baseline: int = 5,
                 patience: int = 1):
        if factor <= 1 or baseline < 1 or patience < 1:
            raise ValueError(f"signal_rise: factor must be > 1 and baseline, patience >= 1; got factor {factor}, "
                             f"baseline {baseline}, patience {patience}")
        self.signal, self.factor, self.floor = str(signal), float(factor), float(floor)
        self.baseline, self.patience = int(baseline), int(patience)

    def key(self, signals: dict[str, float]) -> str | None:
        """The key of ``signals`` holding this rule's signal, or None."""
        if self.signal in signals:
            return self.signal
        return next((k for k in signals if k.endswith("/" + self.signal)), None)

    def series(self, history: History) -> list[float]:
        """The signal at every check that has it, in order."""
        out = []
        for c in history.checks:
            k = self.key(c.signals)
            if k is not None:
                out.append(float(c.signals[k]))
        return out

    def _measure(self, history: History) -> dict[str, Any] | None:
        if not history.checks or self.key(history.checks[-1].signals) is None:
            return None
        values = self.series(history)
        rows = []
        for i in range(len(values) - self.patience, len(values)):
            if i < self.baseline:
                return None
            base = statistics.median(values[i - self.baseline: i])
            rows.append((values[i], base, max(self.floor, self.factor * base)))
        return {"value": rows[-1][0], "baseline": rows[-1][1], "threshold": rows[-1][2],
                "fired": all(v > th for v, _, th in rows)}

    def __call__(self, history: History) -> dict[str, Any] | None:
        ev = self._measure(history)
        if ev is None or not ev["fired"]:
            return None
        cur = history.checks[-1]
        return {"rule": self.name, "signal": self.key(cur.signals), "signal_value": ev["value"],
                "signal_baseline": ev["baseline"], "threshold": ev["threshold"], "pgd_acc": cur.pgd,
                "fgsm_acc": cur.fgsm, "clean_acc": cur.clean}

    def healthy(self, history: History) -> bool:
        ev = self._measure(history)
        return ev is None or ev["value"] <= (ev["baseline"] + ev["threshold"]) / 2

    def message(self, ev: dict[str, Any]) -> str:
        return (f"catastrophic overfitting: the signal {ev['signal']} is {ev['signal_value']:.4g}, above {ev['threshold']:.4g} "
                f"(max of the floor and {self.factor:g}x its baseline {ev['signal_baseline']:.4g}, the median of the "
                f"{self.baseline} checks before); PGD accuracy on the held-out check batch is {ev['pgd_acc']:.3f}, "
                f"FGSM {ev['fgsm_acc']:.3f}, clean {ev['clean_acc']:.3f}")
