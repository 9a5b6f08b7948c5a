"""FGSM and PGD trainers: presets of the one :class:`Trainer` that only choose its training attack."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..attacks import build_attack
from ..errors import ConfigError
from ..threat import ThreatModel
from .trainer import Trainer

FGSM_VARIANTS = ("fgsm", "fgsm_rs", "nfgsm")


class FGSMTrainer(Trainer):
    """Single-step adversarial training: FGSM, FGSM-RS (Wong et al. 2020) or N-FGSM (de Jorge et al. 2022).

    The attack runs with BatchNorm in train mode (batch statistics), as in the official codes.
    ``attack_kwargs`` override the variant's step, init_scale or projection.
    """

    def __init__(self, model: nn.Module, threat: ThreatModel, optimizer, schedule, train_loader, *,
                 variant: str = "fgsm_rs", bn_mode: str = "train", attack_kwargs: dict | None = None,
                 **trainer_kwargs: Any):
        if variant not in FGSM_VARIANTS:
            raise ConfigError(f"FGSMTrainer variant must be one of {FGSM_VARIANTS}, got {variant!r}.")
        attack = build_attack(variant, threat, bn_mode=bn_mode, amp_dtype=trainer_kwargs.get("amp_dtype"),
                              **(attack_kwargs or {}))
        super().__init__(model, attack, optimizer, schedule, train_loader, **trainer_kwargs)


class PGDTrainer(Trainer):
    """Multi-step adversarial training (Madry et al. 2018, Rice et al. 2020 recipe): PGD-``steps`` with
    step ``step`` (default ε/4), one restart, last iterate, BatchNorm in train mode. ``attack_kwargs`` pass
    further attack options (e.g. ``compile=True``)."""

    def __init__(self, model: nn.Module, threat: ThreatModel, optimizer, schedule, train_loader, *,
                 steps: int = 10, step: float | None = None, restarts: int = 1, bn_mode: str = "train",
                 attack_kwargs: dict | None = None, **trainer_kwargs: Any):
        attack = build_attack("pgd", threat, steps=steps, step=step, restarts=restarts, keep_best=False,
                              bn_mode=bn_mode, amp_dtype=trainer_kwargs.get("amp_dtype"), **(attack_kwargs or {}))
        super().__init__(model, attack, optimizer, schedule, train_loader, **trainer_kwargs)
