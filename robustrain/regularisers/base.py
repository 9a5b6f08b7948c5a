"""What the regularisers share: per-example losses, random points of the ε-ball, ε in pixel levels.

Every random draw comes from the trainer's generator (``ctx.generator``), so a resumed run draws the same
numbers as an uninterrupted one; every forward runs under ``ctx.autocast()`` with the loss in fp32.

Which radius a term uses: points in the ε-ball are drawn in the threat model of the step (``ctx.threat``, see
:func:`step_threat`), the one the attack used, so during the ε warm-up ELLE's triplets and GradAlign's η shrink with
the attack. Weights chosen from ε at construction (ELLE's λ, GradAlign's λ, AAER's λ2/λ3) stay those of the full ε;
AAER, ConvergeSmooth and weight centralisation use no radius at step time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import Registry
from ..threat import ThreatModel, clip_to_box
from ..training.hooks import LossTerm, StepContext

REGULARISERS: Registry[type[LossTerm]] = Registry("regulariser", base=LossTerm)
"""The regularisers by name; each is registered at its definition with ``@register_regulariser``."""
register_regulariser = REGULARISERS.register


def wide(t: Tensor) -> Tensor:
    """``t`` in fp32, or as it is when already fp32 or fp64 (low-precision autocast outputs are upcast)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def per_example_ce(logits: Tensor, y: Tensor) -> Tensor:
    """Per-example cross-entropy in fp32 or wider (shape (B,))."""
    return F.cross_entropy(wide(logits), y, reduction="none")


def eps_pixels(threat: ThreatModel) -> float:
    """ε in pixel levels (ε·255), rounded to 1e-6 so that 8/255 gives exactly 8."""
    return round(threat.eps * 255, 6)


def step_threat(ctx: StepContext, own: ThreatModel) -> ThreatModel:
    """The threat model of this step: the one the attack used (``ctx.threat``: the ε warm-up's scaled one), or the
    term's ``own`` when the context carries none (a context built outside the Trainer)."""
    return own if ctx.threat is None else ctx.threat


def random_points(ctx: StepContext, threat: ThreatModel, clip: bool) -> Tensor:
    """``x + η`` with η uniform in the ε-ball (U[−ε, ε]^d for L∞), drawn from ``ctx.generator``; clipped to
    the [0,1] box only when ``clip`` (fp32 arithmetic, returned in the input dtype)."""
    x = wide(ctx.x)
    eta = threat.sample_ball(x, threat.eps, ctx.generator)
    if clip:
        eta = clip_to_box(x, eta)
    return (x + eta.to(x.dtype)).to(ctx.x.dtype)


def zero_loss(ctx: StepContext) -> Tensor:
    """A scalar zero on the input's device (the value of a term that is switched off for this step)."""
    return torch.zeros((), device=ctx.x.device)


__all__ = ["LossTerm", "StepContext", "eps_pixels", "per_example_ce", "random_points", "step_threat", "wide",
           "zero_loss"]
