"""Per-iteration learning-rate (and momentum) schedules that say what the official training scripts do.

A schedule is a pure function of the global step (the number of optimiser steps already taken), so a resumed run
needs only the step count, and the overfitting monitor's ``lr_scale`` remedy multiplies whatever it returns. Each
kind below reproduces, float for float, the learning rate (and the momentum, where the official code changes it)
that an official script uses at every iteration; ``tests/test_training.py`` checks the torch-scheduler kinds step
by step against ``torch.optim.lr_scheduler.CyclicLR`` / ``MultiStepLR`` and the numpy kinds against the scripts'
own formulas.

Kinds (``schedule.name``):

``constant``
    ``lr`` throughout.

``cyclic`` — :class:`torch.optim.lr_scheduler.CyclicLR` (``mode="triangular"``) with ``base_lr = 0``,
    ``max_lr = lr``, ``step_size_up = T·p/q`` and ``step_size_down = T·(q−p)/q`` where ``T`` is the number of
    iterations and ``peak = p/q`` (``peak: 0.5`` is ``T/2`` up and ``T/2`` down, ``peak: 0.4`` is ``T*2/5`` up and
    ``T*3/5`` down, written as the scripts write them), stepped once per iteration after the optimiser step: step
    ``k`` uses the value CyclicLR holds after ``k`` scheduler steps (so the first step has lr 0, as in the scripts).
    With ``cycle_momentum`` (default: on when the optimiser has momentum, i.e. SGD with momentum > 0 or Adam/AdamW,
    as CyclicLR) the momentum runs opposite to the lr, from ``max_momentum`` (0.9) down to ``base_momentum`` (0.8)
    at the lr peak and back; for Adam/AdamW it is ``beta1`` that cycles (CyclicLR's ``use_beta1``), and as in
    CyclicLR ``max_momentum`` replaces ``optim.momentum`` / ``optim.betas[0]``. Official users:
    locuslab/fast_adversarial CIFAR10/train_fgsm.py@54f7287 (FGSM-RS, ``--lr-schedule cyclic``, peak 1/2),
    pdejorge/N-FGSM train.py@0a9e4f0 (peak 1/2; SVHN 2/5), and the ELLE, AAER, LAP and ConvergeSmooth CIFAR
    scripts, all with CyclicLR's default momentum cycling (SGD 0.9 → 0.8 at the peak → 0.9).

``interp`` — the numpy triangle ``np.interp(t, [0, E·p//q, E], [0, lr, 0])`` evaluated at
    ``t = epoch + (i+1)/n_batches`` (``epoch`` from 0, ``i`` the batch index, ``E`` the number of epochs, the middle
    knot an *integer* division ``E*p//q`` for ``peak = p/q``, e.g. ``10*2//5 = 4``): the lr of a batch is the value at
    its *end*, so the first batch already has ``lr·(1/n)/knot`` and the last one 0. Momentum is not touched
    (``cycle_momentum`` must stay off). Official users: locuslab/fast_adversarial MNIST/train_mnist.py@54f7287
    (Wong MNIST, ``--lr-type cyclic``: Adam, peak 2/5, lr 5e-3, 10 epochs), tml-epfl/understanding-fast-adv-training
    train.py + utils.get_lr_schedule@ceed494 (GradAlign, ``cyclic``: ``lr_schedule(epoch − 1 + (i+1)/n)`` with
    epochs counted from 1 after a step-free epoch 0, i.e. the same ``t``; peak 2/5), locuslab/robust_overfitting
    train_cifar.py@c47a25c ``superconverge``.

``multistep`` — piecewise-constant: ``lr`` until the first of ``milestones`` (epochs), then ``lr·f₁``, ... Options
    that state the official convention:

    * ``factors`` (default empty): the multiplier after each milestone, one per milestone. Empty: ``gamma`` chained
      as MultiStepLR does (``lr·γ``, ``(lr·γ)·γ``, ...). A number ``f`` multiplies (``lr * 0.01`` as the TRADES, AWP
      and MART ``adjust_learning_rate`` write it); a fraction string ``"a/b"`` is computed ``lr * a / b`` (Rice's
      ``lr_max / 10.`` is ``"1/10"``), because ``0.1/10`` and ``0.1*0.1`` are different floats.
    * ``count_from`` 0 or 1: how milestones count epochs. 0 (robustrain, MultiStepLR stepped per epoch): milestone
      ``m`` decays from the epoch with 0-based index ``m``. 1 (the TRADES / TRADES-AWP / MART scripts: ``for epoch
      in range(1, epochs + 1)`` and ``if epoch >= m``): from 0-based index ``m − 1``, one epoch earlier. TRADES'
      ``[75]`` is ``milestones: [75], count_from: 1`` (epochs 75 and 76 of 76 at lr/10); read 0-based it would decay
      one epoch late.
    * ``at`` ``epoch`` or ``batch_end``: where the position is taken. ``epoch``: the whole epoch has one lr, decided
      by its index. ``batch_end``: at ``t = epoch + (i+1)/n_batches`` (+ ``count_from``), as
      locuslab/robust_overfitting train_cifar.py@c47a25c ``piecewise`` (``t/E < 0.5`` → lr, ``< 0.75`` → lr/10,
      else lr/100), csdongxian/AWP AT_AWP/train_cifar10.py@a7acf5d and ChaojianYu/Robust-Weight-Perturbation
      AT_AWP_RWP/train_cifar10.py@1aaa83f do: the last batch of epoch ``m − 1`` already runs at the decayed lr.
      Rice 200 epochs = ``milestones: [100, 150], factors: ["1/10", "1/100"], at: batch_end``.

``cosine``
    ``lr · (1 + cos(π t / T)) / 2`` per iteration ``t`` of ``T``.

``onecycle`` — :class:`torch.optim.lr_scheduler.OneCycleLR` with its defaults (``anneal_strategy="cos"``,
    ``div_factor`` 25, ``final_div_factor`` 1e4, two phases): from ``lr/25`` up to ``lr`` over the first
    ``peak·T − 1`` scheduler steps (``pct_start = peak``), then down to ``lr/25/1e4`` at step ``T − 1``, each phase a
    half cosine. ``at: epoch``: the scheduler is stepped once per epoch with ``T = epochs`` (the whole epoch has the
    lr of its index), as fzjcdt/FastAT_Benchmark main.py@b99c0de (``OneCycleLR(opt, max_lr=lr,
    total_steps=total_epoch)``, ``scheduler.step()`` after each epoch); ``at: batch_end``: once per iteration with
    ``T`` = all iterations (step ``k`` uses the value after ``k`` scheduler steps). With ``cycle_momentum`` (on by
    default when the optimiser has momentum, as OneCycleLR) the momentum runs opposite, ``max_momentum`` →
    ``base_momentum`` at the peak → ``max_momentum`` (OneCycleLR's own defaults are 0.95 / 0.85: set them in the
    recipe; it replaces ``optim.momentum`` from the first step, as OneCycleLR does).

Momentum: only ``cyclic`` and ``onecycle`` change it; every other kind leaves the optimiser's momentum (or beta1) as configured.
The Trainer writes the lr and the momentum in force at every logged step to ``metrics.jsonl`` (``lr``,
``momentum``; beta1 for Adam).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError
from ..registry import Registry, choice

SCHEDULES: Registry[Callable[["LRSchedule", int], float]] = Registry("learning-rate schedule")
"""The schedule kinds by name: each is the function ``(schedule, step) -> lr`` registered at its definition (below
:class:`LRSchedule`) with ``@SCHEDULES.register``."""
CYCLING = ("cyclic", "onecycle")  # the kinds that cycle the momentum
POSITIONS = ("epoch", "batch_end")


def peak_fraction(peak: float) -> Fraction:
    """``peak`` as the small fraction p/q it was written as (0.5 → 1/2, 0.4 → 2/5)."""
    return Fraction(peak).limit_denominator(10_000)


def parse_factor(value: Any, where: str) -> float | Fraction:
    """A ``multistep`` factor: a number (multiplies) or an ``"a/b"`` string (``lr * a / b``)."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number or a fraction string such as '1/10', got {value!r}.")
    if isinstance(value, Fraction):  # already parsed (LRSchedule.resolve re-runs __post_init__)
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            frac = Fraction(value.replace(" ", ""))
        except (ValueError, ZeroDivisionError):
            pass
        else:
            return frac if "/" in value else float(frac)
    raise ConfigError(f"{where}: expected a number such as 0.1 or a fraction string such as '1/10', got {value!r}.")


def optimizer_momentum(optimizer: Any) -> float | None:
    """The momentum (SGD) or beta1 (Adam, AdamW) of the first parameter group; None for optimisers without."""
    group = optimizer.param_groups[0]
    if "betas" in group:
        return float(group["betas"][0])
    if "momentum" in group:
        return float(group["momentum"])
    return None


def has_momentum(optimizer: Any) -> bool:
    """Whether cycling momentum means anything for ``optimizer``: SGD with momentum > 0, or an Adam-like beta1."""
    group = optimizer.param_groups[0]
    return "betas" in group or float(group.get("momentum", 0.0)) > 0.0


def set_momentum(optimizer: Any, momentum: float) -> None:
    """Set SGD momentum or Adam beta1 in every parameter group (as CyclicLR does)."""
    for group in optimizer.param_groups:
        if "betas" in group:
            group["betas"] = (momentum, *group["betas"][1:])
        elif "momentum" in group:
            group["momentum"] = momentum
        else:
            raise ConfigError(
                f"schedule.cycle_momentum: the optimiser {type(optimizer).__name__} has neither momentum nor betas; "
                "set schedule.cycle_momentum: false."
            )


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate (and momentum) at each iteration; see the module docstring for the kinds and conventions.

    Args:
        kind: constant, cyclic, interp, multistep, cosine or onecycle.
        lr: the peak / initial learning rate (``optim.lr``).
        total_steps: iterations of the whole run (epochs × batches per epoch).
        steps_per_epoch: batches per epoch.
        peak: cyclic / interp / onecycle: the fraction of training spent going up (onecycle: ``pct_start``).
        milestones: multistep: epochs at which the lr drops.
        gamma: multistep: the chained factor when ``factors`` is empty.
        factors: multistep: the lr multiplier after each milestone (number, or ``Fraction`` = ``lr * a / b``).
        count_from: multistep: 0 or 1, how milestones count epochs.
        at: multistep: ``epoch`` or ``batch_end`` (position ``epoch + (i+1)/n``).
        cycle_momentum: cyclic: cycle the momentum (beta1); None = on when the optimiser has momentum (resolved by
            :meth:`resolve` against the optimiser; the Trainer does it).
        base_momentum: cyclic: momentum at the lr peak (0.8).
        max_momentum: cyclic: momentum at lr 0 (0.9).
    """

    kind: str
    lr: float
    total_steps: int
    steps_per_epoch: int
    peak: float = 0.5
    milestones: tuple[float, ...] = field(default_factory=tuple)
    gamma: float = 0.1
    factors: tuple[Any, ...] = field(default_factory=tuple)
    count_from: int = 0
    at: str = "epoch"
    cycle_momentum: bool | None = None
    base_momentum: float = 0.8
    max_momentum: float = 0.9

    def __post_init__(self) -> None:
        SCHEDULES.check(self.kind, (), "schedule")
        if not 0.0 < self.peak < 1.0:
            raise ConfigError(f"schedule.peak is the fraction of training at the peak, in (0,1); got {self.peak}.")
        if self.total_steps < 1 or self.steps_per_epoch < 1:
            raise ConfigError(f"a schedule needs at least one step, got total_steps={self.total_steps}.")
        if self.count_from not in (0, 1):
            raise ConfigError(
                f"schedule.count_from = {self.count_from!r}; expected 0 (milestone m decays from the 0-based epoch m) "
                "or 1 (epochs counted from 1 as in the TRADES/AWP/MART scripts: from the 0-based epoch m - 1)."
            )
        choice("schedule position", self.at, POSITIONS, "schedule.at")
        if self.factors and len(self.factors) != len(self.milestones):
            raise ConfigError(
                f"schedule.factors has {len(self.factors)} values for {len(self.milestones)} milestones; give one lr "
                "multiplier per milestone (or none, to chain gamma)."
            )
        object.__setattr__(self, "factors",
                           tuple(parse_factor(f, f"schedule.factors[{i}]") for i, f in enumerate(self.factors)))
        if self.cycle_momentum and self.kind not in CYCLING:
            raise ConfigError(
                f"schedule.cycle_momentum: true needs schedule.name: cyclic (CyclicLR) or onecycle (OneCycleLR); "
                f"{self.kind!r} keeps the optimiser's momentum (the official scripts with that schedule do not cycle it)."
            )
        for name in ("base_momentum", "max_momentum"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"schedule.{name} must lie in [0, 1), got {getattr(self, name)}.")
        if self.base_momentum > self.max_momentum:
            raise ConfigError(
                f"schedule.base_momentum ({self.base_momentum}) is the momentum at the lr peak and must not exceed "
                f"schedule.max_momentum ({self.max_momentum})."
            )

    # -- binding to an optimiser ------------------------------------------------------------------
    def resolve(self, optimizer: Any) -> "LRSchedule":
        """This schedule with ``cycle_momentum`` decided for ``optimizer`` (None → on for cyclic when the optimiser
        has momentum, as CyclicLR's default)."""
        if self.cycle_momentum is not None:
            if self.cycle_momentum and optimizer_momentum(optimizer) is None:
                raise ConfigError(
                    f"schedule.cycle_momentum: the optimiser {type(optimizer).__name__} has neither momentum nor "
                    "betas; set schedule.cycle_momentum: false."
                )
            return self
        return dataclasses.replace(self, cycle_momentum=self.kind in CYCLING and has_momentum(optimizer))

    # -- CyclicLR ---------------------------------------------------------------------------------
    def _cyclic_scale(self, step: int) -> float:
        """CyclicLR's ``scale_factor`` after ``step`` scheduler steps (same float operations, same order)."""
        frac = peak_fraction(self.peak)
        up = float(self.total_steps * frac.numerator / frac.denominator)
        down = float(self.total_steps * (frac.denominator - frac.numerator) / frac.denominator)
        total_size = up + down
        step_ratio = up / total_size
        cycle = math.floor(1 + step / total_size)
        x = 1.0 + step / total_size - cycle
        if x <= step_ratio:
            return x / step_ratio
        return (x - 1) / (step_ratio - 1)

    def _onecycle(self, step: int, start: float, peak: float, end: float) -> float:
        """OneCycleLR's two-phase cosine value after ``step`` finished steps (same float operations, same order):
        ``start`` → ``peak`` up to scheduler step ``pct_start·T − 1``, then ``peak`` → ``end`` at ``T − 1``."""
        if self.at == "epoch":
            t, total = step // self.steps_per_epoch, self.total_steps // self.steps_per_epoch
        else:
            t, total = step, self.total_steps
        phases = ((float(self.peak * total) - 1, start, peak), (total - 1, peak, end))
        begin = 0.0
        for i, (stop, a, b) in enumerate(phases):
            if t <= stop or i == len(phases) - 1:
                pct = (t - begin) / (stop - begin)
                return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)
            begin = stop
        raise AssertionError("unreachable")  # pragma: no cover

    def _position(self, step: int) -> float:
        epoch, i = divmod(step, self.steps_per_epoch)
        if self.kind == "interp" or self.at == "batch_end":
            return epoch + (i + 1) / self.steps_per_epoch
        return epoch

    def __call__(self, step: int) -> float:
        """The learning rate of the optimiser step that follows ``step`` finished steps."""
        return SCHEDULES[self.kind](self, max(int(step), 0))

    def momentum(self, step: int) -> float | None:
        """The momentum (beta1) of the step after ``step`` finished steps, or None to leave the optimiser's."""
        if self.kind not in CYCLING or not self.cycle_momentum:
            return None
        if self.kind == "onecycle":
            return self._onecycle(max(int(step), 0), self.max_momentum, self.base_momentum, self.max_momentum)
        scale = self._cyclic_scale(max(int(step), 0))
        return self.max_momentum - (self.max_momentum - self.base_momentum) * scale * 1.0


@SCHEDULES.register("constant")
def _constant(s: LRSchedule, step: int) -> float:
    return s.lr


@SCHEDULES.register("cyclic")
def _cyclic(s: LRSchedule, step: int) -> float:
    return 0.0 + (s.lr - 0.0) * s._cyclic_scale(step) * 1.0


@SCHEDULES.register("interp")
def _interp(s: LRSchedule, step: int) -> float:
    epochs = s.total_steps / s.steps_per_epoch
    frac = peak_fraction(s.peak)
    n_epochs = round(epochs) if float(epochs).is_integer() else epochs
    knot = n_epochs * frac.numerator // frac.denominator
    return float(np.interp([s._position(step)], [0, knot, n_epochs], [0, s.lr, 0])[0])


@SCHEDULES.register("multistep")
def _multistep(s: LRSchedule, step: int) -> float:
    pos = s._position(step) + s.count_from
    passed = sum(pos >= m for m in s.milestones)
    if s.factors:
        if passed == 0:
            return s.lr
        f = s.factors[passed - 1]
        if isinstance(f, Fraction):
            return s.lr * f.numerator / f.denominator
        return s.lr * f
    lr = s.lr
    for _ in range(passed):
        lr = lr * s.gamma  # chained, as MultiStepLR multiplies the group's lr at each milestone
    return lr


@SCHEDULES.register("cosine")
def _cosine(s: LRSchedule, step: int) -> float:
    t = min(step, s.total_steps)
    return s.lr * 0.5 * (1.0 + math.cos(math.pi * t / s.total_steps))


@SCHEDULES.register("onecycle")
def _onecycle(s: LRSchedule, step: int) -> float:
    initial = s.lr / 25.0
    return s._onecycle(step, initial, s.lr, initial / 1e4)
