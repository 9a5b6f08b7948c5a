"""Per-iteration learning-rate schedules.

A schedule is a pure function of the global step, so resuming a run needs only the step count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import ConfigError, unknown_name

SCHEDULES = ("constant", "cyclic", "multistep", "cosine")


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate at each iteration.

    Kinds:
        constant: ``lr`` throughout.
        cyclic: linear 0 → ``lr`` over the first ``peak`` fraction of all iterations, then linear back
            to 0 (Wong et al. 2020; per iteration, not per epoch).
        multistep: ``lr`` multiplied by ``gamma`` at each epoch in ``milestones`` (Rice et al.: 100, 150
            of 200).
        cosine: ``lr · (1 + cos(π t / T)) / 2`` per iteration.
    """

    kind: str
    lr: float
    total_steps: int
    steps_per_epoch: int
    peak: float = 0.5
    milestones: tuple[int, ...] = field(default_factory=tuple)
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise unknown_name("learning-rate schedule", self.kind, SCHEDULES)
        if not 0.0 < self.peak < 1.0:
            raise ConfigError(f"schedule.peak is the fraction of training at the peak, in (0,1); got {self.peak}.")
        if self.total_steps < 1 or self.steps_per_epoch < 1:
            raise ConfigError(f"a schedule needs at least one step, got total_steps={self.total_steps}.")

    def __call__(self, step: int) -> float:
        t = min(max(step, 0), self.total_steps)
        if self.kind == "constant":
            return self.lr
        if self.kind == "cyclic":
            up = self.peak * self.total_steps
            if t <= up:
                return self.lr * t / up
            return self.lr * max(0.0, (self.total_steps - t) / (self.total_steps - up))
        if self.kind == "multistep":
            epoch = t / self.steps_per_epoch
            return self.lr * self.gamma ** sum(epoch >= m for m in self.milestones)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * t / self.total_steps))
