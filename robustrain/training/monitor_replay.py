"""Tools for evaluating the overfitting monitor's rules offline (scripts/monitor_eval.py, monitor_noise.py,
monitor_signals.py and their tests): the stored Rice et al. curve, first declarations on replayed histories, and the
latent model of per-example validation flags that persist from epoch to epoch.

Latent model (a Gaussian copula): image i at epoch t is robust iff u_i(t) < Φ⁻¹(p(t)), with p(t) the curve's
accuracy and u_i(t) = √h·c_i + √s·r_i(t) + √(1−h−s)·e_i(t): c_i ~ N(0, 1) fixed per image (some images are always
robust, some never), r_i(t) a stationary AR(1) in t with coefficient ψ (an image's robustness drifts slowly from
model to model) and e_i(t) fresh N(0, 1) noise every epoch (the flags that flicker). The latent correlation between
epochs k ≥ 1 apart is ρ(k) = h + s·ψᵏ; the flip rate between them is 2·(p − Φ₂(a, a; ρ(k))), a = Φ⁻¹(p), so the
marginal curve is p(t) while adjacent epochs share most flags. :func:`fit_latent` fits h, s and ψ by least squares
to the flip rates measured at lags 1..K of recorded flags.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from .monitor_rules import History, Rule
from .overfitting import Check

RICE_CURVE = Path(__file__).resolve().parents[2] / "results" / "studies" / "data" / "rice_cifar10_validation.csv"


def load_curve(path: Path) -> tuple[dict[str, list[float]], str]:
    lines = path.read_text().splitlines()
    source = next((l[len("# source: "):] for l in lines if l.startswith("# source: ")), "?")
    rows = list(csv.DictReader(l for l in lines if not l.startswith("#")))
    return {k: [float(r[k]) for r in rows] for k in rows[0]}, source


def first_declaration(rule: Rule, hist: History) -> int | None:
    """The first epoch after which the monitor, calling ``rule`` after every epoch, declares (1-based), or None.
    Rules with a causal per-epoch ``statistic`` are read in one pass (tests/test_monitor.py checks it agrees with
    calling the rule epoch by epoch); others are called on every prefix."""
    if hasattr(rule, "statistic"):
        run = 0
        for row in rule.statistic(hist):
            run = run + 1 if row["drop"] > row["threshold"] else 0
            if run >= rule.patience:
                return row["epoch"]
        return None
    for k in range(1, len(hist.val_robust) + 1):
        sub = History(val_robust=hist.val_robust[:k], lr=hist.lr[:k], n_val=hist.n_val, arm_epoch=hist.arm_epoch,
                      epochs=hist.epochs)
        if rule(sub) is not None:
            return k
    return None


def first_check_declaration(rule: Rule, checks: Sequence[Check]) -> int | None:
    """The step of the first check at which a catastrophic-overfitting ``rule``, called after every check as the
    monitor calls it, declares; None if it never does."""
    for i in range(1, len(checks) + 1):
        if rule(History(checks=list(checks[:i]), checks_planned=len(checks))) is not None:
            return checks[i - 1].step
    return None


def quantiles(xs: Sequence[float], qs: Sequence[float]) -> list[float]:
    xs = sorted(xs)
    return [xs[min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))] for q in qs]


def pct(x: float) -> str:
    """A share as a percentage with one decimal ("—" for NaN)."""
    return "—" if x != x else f"{100 * x:.1f} %"


# -- per-example flags: the latent model ---------------------------------------------------------------------
def load_flags(path: Path) -> tuple[list[int], list[float], torch.Tensor]:
    """(epochs, lrs, flags (epochs, n) bool) of a recorded file."""
    epochs, lrs, flags = [], [], []
    for line in path.read_text().splitlines():
        if line.startswith("#") or line.startswith("epoch,"):
            continue
        e, lr, _, bits = line.split(",")
        epochs.append(int(e))
        lrs.append(float(lr))
        flags.append([c == "1" for c in bits])
    return epochs, lrs, torch.tensor(flags, dtype=torch.bool)


# -- fit ----------------------------------------------------------------------------------------------------
def flip_rates(flags: torch.Tensor, max_lag: int) -> list[float]:
    """Mean fraction of images whose flag differs between epochs ``k`` apart, k = 1..max_lag."""
    f = flags.float()
    return [float((f[k:] != f[:-k]).float().mean()) for k in range(1, max_lag + 1)]


def model_flip_rate(p: float, rho: float) -> float:
    """Flip rate between two epochs at accuracy ``p`` whose latents correlate ``rho`` (Gaussian copula)."""
    from scipy.stats import multivariate_normal, norm

    a = norm.ppf(p)
    rho = min(max(rho, -0.999999), 0.999999)
    both = multivariate_normal(mean=[0.0, 0.0], cov=[[1.0, rho], [rho, 1.0]]).cdf([a, a])
    return 2.0 * (p - both)


def _unpack(theta: Sequence[float]) -> tuple[float, float, float]:
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    h = sig(theta[0])
    return h, (1 - h) * sig(theta[1]), sig(theta[2])


def fit_latent(flags: torch.Tensor, max_lag: int = 18) -> dict[str, Any]:
    """h (share of the latent fixed per image), s (share drifting as an AR(1)) and ψ (its coefficient per epoch)
    fitted to the flip rates at lags 1..max_lag of ``flags`` (epochs × images), at its mean accuracy."""
    from scipy.optimize import minimize

    p = float(flags.float().mean())
    lags = min(max_lag, flags.shape[0] - 1)
    measured = flip_rates(flags, lags)

    def loss(theta: Sequence[float]) -> float:
        h, s, psi = _unpack(theta)
        return sum((model_flip_rate(p, h + s * psi ** k) - m) ** 2 for k, m in enumerate(measured, 1))

    best = min((minimize(loss, x0, method="Nelder-Mead", options={"xatol": 1e-5, "fatol": 1e-14, "maxiter": 4000})
                for x0 in ([0.0, 0.0, 0.0], [3.0, 0.0, 3.0], [2.0, 1.0, 4.0], [4.0, -1.0, 2.0])), key=lambda r: r.fun)
    h, s, psi = _unpack(best.x)
    fitted = [float(model_flip_rate(p, h + s * psi ** k)) for k in range(1, lags + 1)]
    independent = 2 * p * (1 - p)  # flip rate if every epoch drew its flags afresh (the binomial replay's model)
    return {"h": h, "s": s, "psi": psi, "p": p, "epochs": flags.shape[0], "n": flags.shape[1], "measured": measured,
            "fitted": fitted, "independent": independent}


def simulate_flags(curve: Sequence[float], n: int, runs: int, h: Sequence[float], s: Sequence[float],
                   psi: Sequence[float], generator: torch.Generator) -> torch.Tensor:
    """(runs, epochs, n) bool: per-image flags whose accuracy follows ``curve`` in expectation, the latent model
    above with the parameters ``h[t]``, ``s[t]``, ``psi[t]`` of each epoch (u stays N(0, 1) at every epoch)."""
    epochs = len(curve)
    thresholds = torch.distributions.Normal(0.0, 1.0).icdf(
        torch.tensor(curve, dtype=torch.float32).clamp(1e-6, 1 - 1e-6))
    c = torch.randn(runs, n, generator=generator)
    r = torch.randn(runs, n, generator=generator)
    out = torch.empty(runs, epochs, n, dtype=torch.bool)
    for t in range(epochs):
        if t:
            r = psi[t] * r + math.sqrt(1 - psi[t] ** 2) * torch.randn(runs, n, generator=generator)
        e = torch.randn(runs, n, generator=generator)
        u = math.sqrt(h[t]) * c + math.sqrt(s[t]) * r + math.sqrt(max(0.0, 1 - h[t] - s[t])) * e
        out[:, t] = u < thresholds[t]
    return out
