"""The TRADES / MART training attack: PGD from a small Gaussian start, model in eval mode.

TRADES (yaodongyu/TRADES ``trades.py``): start ``x + 0.001·N(0, I)``, ``steps`` signed steps on
``KL(p(x) ‖ p(x + δ))`` (``loss: kl``), each projected onto the ε-ball and the [0,1] box, model in eval mode.
MART (YisenWang/MART ``mart.py``) uses the same start with cross-entropy (``loss: ce``).

A preset of :class:`PGD`: only the start (:meth:`start`) and the loss differ. The clean prediction p(x) is
computed once per batch (the official code recomputes it at every step; in eval mode it is the same value).
By default the start is clipped to the box; ``clip_init: false`` takes the first gradient at the unclipped
``x + 0.001·N`` as both official codes do (the two differ only for pixels within about 0.003 of 0 or 1, but a
signed step turns that into a different x′ there; every iterate after the first step is in the box either way).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..threat import ThreatModel, clip_to_box
from .base import AttackResult, LossFn, cross_entropy, register_attack
from .pgd import PGD

TRADES_LOSSES = ("kl", "ce")


def kl_from_clean(logits_clean: Tensor) -> LossFn:
    """The per-example attack loss ``KL(p(x) ‖ p(x + δ))`` against fixed clean logits (labels unused)."""
    log_p = F.log_softmax(logits_clean.detach().float(), dim=1)
    # p as the official code computes it (F.softmax, not log_p.exp()): near x the KL gradient q − p is tiny and its
    # sign is decided at the rounding level, so the first signed step depends on which of the two floats p is
    p = F.softmax(logits_clean.detach().float(), dim=1)

    def loss(logits: Tensor, y: Tensor) -> Tensor:
        return (p * (log_p - F.log_softmax(logits.float(), dim=1))).sum(dim=1)

    return loss


@register_attack
class TRADESAttack(PGD):
    """PGD on the TRADES KL (``loss: kl``) or on CE (``loss: ce``, MART) from ``x + init_std·N(0, I)``.

    Args:
        loss: ``kl`` (TRADES) or ``ce`` (MART).
        init_std: standard deviation of the Gaussian start (0.001).
        clip_init: clip the start to the [0,1] box before the first gradient (default true); false is the official
            TRADES / MART code (``x_adv = x + 0.001·randn`` fed to the model as it is).

    ``init_std`` is in input units and does not scale with ε (the official codes use 0.001 at every ε), so
    :meth:`scaled` scales only the radius and the step.
        keep_best: off (last iterate, as the official codes).
        **kwargs: ``steps``, ``step``, ``restarts`` of :class:`PGD`; ``bn_mode`` (set ``eval``: the official
            codes attack in eval mode), ``amp_dtype`` of :class:`Attack`.
    """

    name = "trades"

    def __init__(self, threat: ThreatModel, *, loss: str = "kl", init_std: float = 0.001, keep_best: bool = False,
                 clip_init: bool = True, **kwargs):
        if loss not in TRADES_LOSSES:
            raise ConfigError(f"trades attack: loss must be kl (TRADES) or ce (MART), got {loss!r}.")
        if kwargs.get("loss_fn") is not None:
            raise ConfigError("trades attack: the loss is chosen with loss: kl|ce, not loss_fn.")
        if kwargs.get("compile") and loss == "kl":
            raise ConfigError("trades attack: compile is not supported with loss kl (the loss changes every batch).")
        if not float(init_std) >= 0:
            raise ConfigError(f"trades attack: init_std must be >= 0, got {init_std}.")
        super().__init__(threat, keep_best=keep_best, **kwargs)
        self.loss = loss
        self.init_std = float(init_std)
        self.clip_init = bool(clip_init)
        self.loss_fn = cross_entropy

    def _start_rule(self) -> str:
        return (f"x + {self.init_std:g}·N(0, I), projected onto the ε-ball, "
                + ("clipped to the box" if self.clip_init else "not clipped to the box"))

    def _options(self) -> dict:
        return {**super()._options(), "loss": self.loss, "init_std": self.init_std, "clip_init": self.clip_init}

    def loss_name(self) -> str:
        return "kl_from_clean" if self.loss == "kl" else "cross_entropy"

    def start(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        noise = self.init_std * torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        delta = self.threat.project(noise)
        return clip_to_box(x.float(), delta) if self.clip_init else delta

    def run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None) -> AttackResult:
        if self.loss == "ce":
            return super().run(model, x, y, generator)
        with torch.no_grad():
            logits_clean = self.forward(model, x, torch.zeros_like(x, dtype=torch.float32))
        attack = copy.copy(self)  # this batch's loss on a copy: the attack itself is never mutated
        attack.loss_fn = kl_from_clean(logits_clean)
        return PGD.run(attack, model, x, y, generator)
