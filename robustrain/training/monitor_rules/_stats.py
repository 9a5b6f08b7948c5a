"""Sampling error and false-alarm calibration for the monitor's rules.

Model: an accuracy measured on ``n`` images is a binomial proportion, standard error ``sqrt(p(1-p)/n)``. The
monitor measures the *same* images at every check (and the same validation images every epoch), so the errors
persist: two adjacent measurements differ by less than independent samples would, but a mean over several epochs
averages less of the noise away. Under flags that persist as a recorded run's do, the robust-overfitting rule's
false alarms on a flat curve stay at the stated rate (results/studies/monitor_cifar10_replay_paired.md);
:mod:`.robust_overfitting_paired` measures the noise of the difference on the images themselves.

``calibrated_z`` is the threshold, in standard errors of the difference of two ``window``-means, at which the
"best smoothed value minus current smoothed value" statistic of a *flat* curve exceeds it (for ``patience``
consecutive decisions) anywhere in ``horizon`` decisions with probability ``false_alarm``. It is computed once per
argument tuple by a seeded Monte-Carlo simulation of Gaussian noise (the normal approximation of the binomial;
:mod:`scripts.monitor_eval` checks it with binomial noise on a real curve), so the rule's false-alarm rate is a
stated number whatever the window, patience, set size and run length.
"""
from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist
from typing import Sequence

import torch

SIMULATED_RUNS = 20_000


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` images (p clipped to [1/n, 1-1/n] so a perfect or
    null accuracy still has an error)."""
    p = min(max(p, 1.0 / n), 1.0 - 1.0 / n)
    return math.sqrt(p * (1.0 - p) / n)


def window_means(values: Sequence[float], window: int) -> list[float]:
    """Trailing means: entry ``i`` is the mean of ``values[i : i + window]`` (len(values) - window + 1 entries)."""
    out, acc = [], sum(values[:window])
    for i in range(len(values) - window + 1):
        if i:
            acc += values[i + window - 1] - values[i - 1]
        out.append(acc / window)
    return out


def best_window_drops(means: Sequence[float], window: int) -> list[tuple[int, int, float]]:
    """For each current window ``t`` (index into ``means``), the best earlier window that does not overlap it
    (``s <= t - window``): ``(t, s, means[s] - means[t])``. Empty until two disjoint windows exist."""
    out, best_s = [], None
    for t in range(window, len(means)):
        s = t - window
        if best_s is None or means[s] > means[best_s]:
            best_s = s
        out.append((t, best_s, means[best_s] - means[t]))
    return out


@lru_cache(maxsize=256)
def binomial_upper_threshold(n: int, p: float, alpha: float) -> float:
    """The accuracy-scale threshold ``t`` such that a proportion measured on ``n`` images with true value ``p``
    exceeds it with probability at most ``alpha`` (exact binomial tail; ``(k - 0.5) / n`` for the smallest count
    ``k`` with P(X >= k) <= alpha)."""
    p = min(max(p, 1e-12), 1 - 1e-12)
    log_pmf = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p)
               + (n - k) * math.log1p(-p) for k in range(n + 1)]
    tail = 0.0
    for k in range(n, -1, -1):
        nxt = tail + math.exp(log_pmf[k])
        if nxt > alpha:
            return (k + 0.5) / n
        tail = nxt
    return -0.5 / n


def z_per_decision(false_alarm: float, horizon: int) -> float:
    """The one-sided normal quantile that keeps ``horizon`` independent decisions' total false-alarm probability
    at ``false_alarm`` (Šidák)."""
    per = 1.0 - (1.0 - false_alarm) ** (1.0 / max(1, horizon))
    return NormalDist().inv_cdf(1.0 - per)


@lru_cache(maxsize=64)
def calibrated_z(window: int, patience: int, false_alarm: float, horizon: int, runs: int = SIMULATED_RUNS) -> float:
    """Threshold z (in units of sqrt(2/window) standard errors of one measurement) of the best-window drop rule:
    on a flat curve with independent Gaussian noise, P(the drop exceeds z for ``patience`` consecutive windows
    somewhere within ``horizon`` measurements) = ``false_alarm``. Seeded: the same arguments give the same z."""
    if not 0.0 < false_alarm < 1.0:
        raise ValueError(f"false_alarm must be in (0, 1), got {false_alarm}")
    horizon = max(int(horizon), 2 * window + patience)
    gen = torch.Generator().manual_seed(20200126)  # the day Rice et al.'s validation run started
    chunk = max(1, min(runs, 4_000_000 // horizon))  # bounded memory for long runs (many checks)
    worst = []
    for start in range(0, runs, chunk):
        x = torch.randn(min(chunk, runs - start), horizon, generator=gen, dtype=torch.float64)
        m = x.unfold(1, window, 1).mean(-1)                       # (runs, horizon - window + 1) window means
        best = m[:, : m.shape[1] - window].cummax(dim=1).values    # best window ending at least `window` earlier
        d = (best - m[:, window:]) / math.sqrt(2.0 / window)       # in units of the difference's standard error
        if patience > 1:
            d = d.unfold(1, patience, 1).min(-1).values             # fires only if `patience` in a row exceed z
        worst.append(d.max(dim=1).values)
    return float(torch.quantile(torch.cat(worst), 1.0 - false_alarm))


def first_decay(lrs: Sequence[float], fraction: float = 0.5) -> int | None:
    """The first epoch (1-based) at whose end the learning rate is at most ``fraction`` of the largest so far
    (``lrs[i]`` = the lr at the end of epoch ``i + 1``); None if it never is. Multistep: the first milestone;
    cosine / cyclic: where the lr has come half-way down; constant: None."""
    top = 0.0
    for i, lr in enumerate(lrs):
        top = max(top, lr)
        if top > 0 and lr <= fraction * top * (1 + 1e-9):  # (1 + 1e-9): exactly half, up to rounding
            return i + 1
    return None
