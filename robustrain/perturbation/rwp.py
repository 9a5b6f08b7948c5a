"""RWP, robust weight perturbation (IJCAI 2022, arXiv 2205.14826; ChaojianYu/Robust-Weight-Perturbation).

Loss stationary condition: perturb the weights using only adversarial examples whose loss is below
``c_min`` (1.7 on CIFAR-10 and SVHN, 4.0 on CIFAR-100). Per batch, with D = 0:

    repeat `steps` (10) times:
        ℓ_i   = per-example training loss at w + γ·D̂ on x_adv
        m_i   = 1[ℓ_i < c_min]
        D    ← D + ∇_w (1/B) Σ_i m_i ℓ_i          (ascent)
        D̂     = (‖w‖ / ‖D‖)·D                      (one global norm over all selected tensors)
    optimiser step at w + γ·D̂, then the perturbation is removed.

As in the official code (``AT_AWP_RWP/utils_rwp.py``) the masked mean divides by the whole batch, the
scaling is global, not per layer, and the per-example loss is the training objective's (CE for PGD-AT, the
per-example TRADES loss for TRADES-RWP). The official code accumulates proxy-SGD weight differences (lr 0.01
times the gradient); the constant cancels in the normalisation, so the gradients are accumulated directly.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..threat import ThreatModel
from ..training.hooks import StepContext
from .base import Perturbation, ascent_gradients, global_scaled, perturbed, register_weight_perturbation


def lsc_mask(per_example_loss: Tensor, c_min: float) -> Tensor:
    """The loss stationary condition: 1.0 for examples whose loss is below ``c_min``, else 0.0."""
    return (per_example_loss.detach().double() < c_min).to(per_example_loss.dtype)  # compared exactly, in fp64


@register_weight_perturbation
class RWP(Perturbation):
    """Robust weight perturbation: ``steps`` ascent steps on the low-loss examples, global scaling.

    Args:
        gamma: relative size of the perturbation (‖v‖ = γ‖w‖ over all selected tensors).
        c_min: loss threshold of the loss stationary condition (1.7 CIFAR-10/SVHN, 4.0 CIFAR-100).
        steps: ascent steps (10 in the official code).
        **kwargs: ``modules``, ``params``, ``warmup_epochs`` of :class:`Perturbation`.
    """

    name = "rwp"

    def __init__(self, threat: ThreatModel, *, gamma: float = 0.01, c_min: float = 1.7, steps: int = 10, **kwargs):
        super().__init__(threat, **kwargs)
        if not gamma >= 0 or int(steps) < 1:
            raise ConfigError(f"rwp: gamma must be >= 0 and steps >= 1, got gamma={gamma}, steps={steps}.")
        self.gamma = float(gamma)
        self.c_min = float(c_min)
        self.steps = int(steps)

    def perturbation(self, ctx: StepContext, loss_fn: Callable[..., Tensor], params: list[nn.Parameter]) -> list[Tensor]:
        def masked_loss() -> Tensor:
            per = loss_fn(per_example=True)
            return (per * lsc_mask(per, self.c_min)).mean()

        total: list[Tensor] | None = None
        scaled = [torch.zeros_like(p) for p in params]
        for _ in range(self.steps):
            with perturbed(params, [self.gamma * d for d in scaled]):
                grads = ascent_gradients(ctx.model, params, masked_loss)
            total = grads if total is None else [t + g for t, g in zip(total, grads)]
            scaled = global_scaled(total, params, 1.0)
        return [self.gamma * d for d in scaled]
