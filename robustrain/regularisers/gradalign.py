"""GradAlign (Andriushchenko & Flammarion, "Understanding and improving fast adversarial training", NeurIPS 2020,
arXiv 2007.02617; tml-epfl/understanding-fast-adv-training).

    term = λ·(1 − mean_i cos(∇ₓℓ(x_i), ∇ₓℓ(x_i + η_i))),   η ~ U[−ε, ε]^d

The mean runs over examples whose two gradients are both non-zero (as in the official code). The second
gradient is taken with ``create_graph=True`` and the penalty is back-propagated through it (double backprop),
so it reaches the weights; a reimplementation that detaches both gradients trains plain FGSM.

As in the official ``train.py`` (commit ceed494): the first gradient is the one the FGSM attack already
computed at its start point, detached (zero-init FGSM, the GradAlign recipe: the clean point; with a random
start, the start point, like the official code with ``--attack_init=random``); only the second one carries the
graph. x + η is not clipped to [0,1] (the official ``get_input_grad`` feeds ``X + delta`` unclipped); ``clip:
true`` clips it. ``reuse_attack_grad: false`` computes the first gradient at the clean point with an extra
forward/backward (what the official code does for non-FGSM attacks).
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..threat import ThreatModel
from .base import (LossTerm, StepContext, eps_pixels, per_example_ce, random_points, register_regulariser, step_threat,
                   wide)


def gradalign_default_lambda(threat: ThreatModel) -> float:
    """λ = 0.02·10^(ε/8) with ε in pixel levels, capped at ε = 16 (0.2 at 8/255, 2.0 at 16/255 and above;
    ``sh/exps_diff_eps_cifar10.sh``; the ELLE repo uses 2.0 for every ε ≥ 16/255)."""
    if threat.norm != "linf":
        raise ConfigError("gradalign: the paper's λ formula is for L∞; set lam explicitly for an L2 threat model.")
    return 0.02 * 10 ** (min(eps_pixels(threat), 16.0) / 8)


def input_gradient(ctx: StepContext, x: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """∇ₓ of the summed per-example CE at ``x`` (model in its current mode, under ``ctx.autocast()``)."""
    x = x.detach().requires_grad_(True)
    with ctx.autocast():
        logits = ctx.model(x)
    (grad,) = torch.autograd.grad(per_example_ce(logits, ctx.y).sum(), x, create_graph=create_graph)
    return grad


@register_regulariser
class GradAlign(LossTerm):
    """Gradient alignment penalty ``λ·(1 − mean cos(∇ₓℓ(x), ∇ₓℓ(x+η)))`` with double backprop.

    Args:
        threat: the threat model (ε sets the default λ; η is uniform in the ε-ball of the step context's threat model,
            the attack's, scaled during an ε warm-up; this one when the context carries none).
        lam: λ; default 0.02·10^(ε·255/8), capped at 2.0 (the official per-ε scripts).
        reuse_attack_grad: take the first gradient from the attack (``AttackResult.grad_init``, no extra pass);
            false computes it at the clean point.
        clip: clip x + η to [0,1] (the official code does not).

    Logs ``cos`` (the mean cosine) and ``n_valid`` (examples with two non-zero gradients).
    """

    name = "gradalign"
    signals = {"cos": "cos"}  # the overfitting monitor reads the gradient cosine (hooks.LossTerm.signals)

    def __init__(self, threat: ThreatModel, *, lam: float | None = None, reuse_attack_grad: bool = True,
                 clip: bool = False):
        self.threat = threat
        self.lam = float(gradalign_default_lambda(threat) if lam is None else lam)
        if self.lam < 0:
            raise ConfigError(f"gradalign: lam must be >= 0, got {self.lam}.")
        self.reuse_attack_grad = bool(reuse_attack_grad)
        self.clip = bool(clip)

    def first_gradient(self, ctx: StepContext) -> torch.Tensor:
        if self.reuse_attack_grad and ctx.result.grad_init is not None:
            return ctx.result.grad_init.detach()
        return input_gradient(ctx, ctx.x, create_graph=False).detach()

    def __call__(self, ctx: StepContext) -> dict[str, Any]:
        g1 = wide(self.first_gradient(ctx).flatten(1))
        points = random_points(ctx, step_threat(ctx, self.threat), self.clip)  # η in the attack's ball of the step
        g2 = wide(input_gradient(ctx, points, create_graph=True).flatten(1))
        n1, n2 = g1.norm(dim=1), g2.norm(dim=1)
        keep = (n1 != 0) & (n2 != 0)
        if not bool(keep.any()):
            zero = g2.sum() * 0.0
            return {"loss": zero, "cos": float("nan"), "n_valid": 0.0}
        cos = ((g1[keep] / n1[keep, None]) * (g2[keep] / n2[keep, None])).sum(dim=1).mean()
        return {"loss": self.lam * (1.0 - cos), "cos": cos.detach(), "n_valid": float(keep.sum())}
