"""Training objectives: the main loss of a step, computed from the clean and adversarial inputs.

Every objective is called with the :class:`StepContext`, runs its forwards under ``ctx.autocast()`` (losses in
fp32), sets ``ctx.logits_adv`` (the forward on ``ctx.result.x_adv``) and returns ``{"loss": mean,
"per_example": (B,) values}`` plus parts to inspect. ``per_example`` is what RWP thresholds.

* ``ce``: cross-entropy on x_adv, optional label smoothing (PGD-AT, FGSM-AT).
* ``trades``: CE(f(x), y) + β·KL(p(x) ‖ p(x_adv)), β = 6 (Zhang et al., ICML 2019, arXiv 1901.08573; train with
  the ``trades`` attack, loss kl).
* ``mart``: boosted CE on x_adv + β·KL(p(x) ‖ p(x_adv))·(1 − p_y(x)), β = 6 (Wang et al., ICLR 2020; the ``trades``
  attack with loss ce is its Gaussian-start CE-PGD).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..registry import Registry
from .hooks import StepContext


OBJECTIVES: Registry[type] = Registry("objective")
"""The objectives by name; each is registered at its definition with ``@register_objective``."""
register_objective = OBJECTIVES.register


def _forward(ctx: StepContext, x: Tensor) -> Tensor:
    with ctx.autocast():
        return ctx.model(x).float()


def kl_per_example(logits_clean: Tensor, logits_adv: Tensor) -> Tensor:
    """KL(p(x) ‖ p(x_adv)) per example, from logits (fp32, log-softmax form)."""
    log_p = F.log_softmax(logits_clean.float(), dim=1)
    log_q = F.log_softmax(logits_adv.float(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


@register_objective
class CrossEntropy:
    """Cross-entropy on the adversarial input, with optional label smoothing."""

    name = "ce"

    def __init__(self, *, label_smoothing: float = 0.0):
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ConfigError(f"ce: label_smoothing must be in [0, 1), got {label_smoothing}.")
        self.label_smoothing = float(label_smoothing)

    def per_example_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """The per-example loss from fp32 logits (what :class:`~.compiled.CompiledObjective` compiles with the
        forward)."""
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing, reduction="none")

    def __call__(self, ctx: StepContext) -> dict[str, Any]:
        logits = _forward(ctx, ctx.result.x_adv)
        ctx.logits_adv = logits
        per = self.per_example_loss(logits, ctx.y)
        return {"loss": per.mean(), "per_example": per}


class _CleanAndAdversarial:
    """What TRADES and MART share: a weight β ≥ 0 on the KL term, and two forwards, clean and adversarial, as in
    the official codes (BatchNorm in train mode normalises each batch with its own statistics); gradients flow
    through both predictions."""

    name = "clean_and_adversarial"

    def __init__(self, *, beta: float = 6.0):
        if not float(beta) >= 0:
            raise ConfigError(f"{self.name}: beta must be >= 0 (6 in the paper), got {beta}.")
        self.beta = float(beta)

    def forwards(self, ctx: StepContext) -> tuple[Tensor, Tensor]:
        """(clean logits, adversarial logits), fp32; sets ``ctx.logits_adv``."""
        logits_clean = _forward(ctx, ctx.x)
        ctx.logits_adv = _forward(ctx, ctx.result.x_adv)
        return logits_clean, ctx.logits_adv


@register_objective
class TRADES(_CleanAndAdversarial):
    """TRADES: ``CE(f(x), y) + β·(1/B)·Σ_i KL(p(x_i) ‖ p(x_adv,i))`` (official ``trades.py``, β = 6)."""

    name = "trades"

    def __call__(self, ctx: StepContext) -> dict[str, Any]:
        logits_clean, logits_adv = self.forwards(ctx)
        ce = F.cross_entropy(logits_clean, ctx.y, reduction="none")
        kl = kl_per_example(logits_clean, logits_adv)
        per = ce + self.beta * kl
        return {"loss": per.mean(), "per_example": per, "ce": ce.mean().detach(), "kl": kl.mean().detach()}


@register_objective
class MART(_CleanAndAdversarial):
    """MART: ``BCE(x_adv) + β·(1/B)·Σ_i KL(p(x_i) ‖ p(x_adv,i))·(1 − p_y(x_i))`` (official ``mart.py``, β = 6 for
    WRN-34-10, 5 for ResNet-18).

    ``BCE = CE(f(x_adv), y) − log(1.0001 − max_{k≠y} p_k(x_adv) + 1e-12)``; the KL uses ``log(p(x_adv) + 1e-12)``
    and the weight ``1.0000001 − p_y(x)``, the official code's stabilising constants. Gradients flow through
    the weight too, as there.
    """

    name = "mart"

    def __call__(self, ctx: StepContext) -> dict[str, Any]:
        logits_clean, logits_adv = self.forwards(ctx)
        y = ctx.y
        p_adv = F.softmax(logits_adv, dim=1)
        others = p_adv.masked_fill(F.one_hot(y, p_adv.shape[1]).bool(), float("-inf"))
        boost = -torch.log(1.0001 - others.max(dim=1).values + 1e-12)
        bce = F.cross_entropy(logits_adv, y, reduction="none") + boost
        p_clean = F.softmax(logits_clean, dim=1)
        kl = (torch.xlogy(p_clean, p_clean) - p_clean * torch.log(p_adv + 1e-12)).sum(dim=1)
        weight = 1.0000001 - p_clean.gather(1, y[:, None]).squeeze(1)
        per = bce + self.beta * kl * weight
        return {"loss": per.mean(), "per_example": per, "bce": bce.mean().detach(), "kl": kl.mean().detach()}


def build_objective(name: str, **options: Any) -> Any:
    """A fresh objective ``name`` (one of :data:`OBJECTIVES`); unknown names and options raise with the choices."""
    return OBJECTIVES.build(name, **options)
