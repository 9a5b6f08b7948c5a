"""AWP (Wu, Xia & Wang, "Adversarial weight perturbation helps robust generalization", NeurIPS 2020,
arXiv 2004.05884; csdongxian/AWP).

Per batch, after the attack: one ascent step on the training objective at ``x_adv`` gives a direction d_l per
selected tensor; ``v_l = γ·‖w_l‖·d_l/‖d_l‖`` (layer-wise scaling); the optimiser step runs at ``w + v`` and the
perturbation is removed afterwards (the update is kept). γ = 0.01 for PGD-AT, 0.005 for TRADES-AWP (with 10
warm-up epochs there).

Paper/code vs here:
* The official code takes one plain-SGD step (lr 0.01) of ``−loss`` on a proxy copy of the model and uses the
  weight difference; after the layer-wise normalisation that direction is the gradient itself, which is what
  is computed here (no proxy copy, no proxy optimiser).
* The proxy runs in train mode and updates its own BatchNorm statistics, which the model never sees; here the
  ascent pass uses batch statistics with the running buffers frozen, the same thing without a copy.
* The ascent is on the objective only (CE for PGD-AT, the full TRADES loss for TRADES, as the official
  ``trades_AWP`` code), not on regularisers added as loss terms.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from ..errors import ConfigError
from ..threat import ThreatModel
from ..training.hooks import StepContext
from .base import Perturbation, ascent_gradients, layer_scaled, register_weight_perturbation


@register_weight_perturbation
class AWP(Perturbation):
    """Adversarial weight perturbation: one ascent step, per-layer radius ``gamma · ‖w_l‖``, removed after
    the update.

    Args:
        gamma: relative size of the perturbation per layer (0.01 PGD-AT, 0.005 TRADES).
        **kwargs: ``modules``, ``params``, ``warmup_epochs`` of :class:`Perturbation`.
    """

    name = "awp"

    def __init__(self, threat: ThreatModel, *, gamma: float = 0.01, **kwargs):
        super().__init__(threat, **kwargs)
        if not gamma >= 0:
            raise ConfigError(f"awp: gamma must be >= 0 (0.01 for PGD-AT, 0.005 for TRADES), got {gamma}.")
        self.gamma = float(gamma)

    def perturbation(self, ctx: StepContext, loss_fn: Callable[..., Tensor], params: list[nn.Parameter]) -> list[Tensor]:
        grads = ascent_gradients(ctx.model, params, loss_fn)
        return layer_scaled(grads, params, [self.gamma] * len(params))
