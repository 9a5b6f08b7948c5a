"""LAP, layer-aware adversarial weight perturbation against catastrophic overfitting (ICML 2024,
arXiv 2405.16262; tmllab/2024_ICML_LAP).

For the l-th selected tensor (l = 1..L in network order; L = 21 for PreActResNet-18, the official
``--layer-number``) the perturbation is

    v_l = β · λ_l · ‖w_l‖ · Δ_l / ‖Δ_l‖,        λ_l = 1 − (ln l / ln L)^γ   (γ = 0.3)

so λ_1 = 1 and λ_L = 0: the early layers, where the paper locates the pseudo-robust shortcuts, are
perturbed most and the classifier not at all. Δ comes from the training loss at the single-step attack's
start point ``x + δ₀`` (zero for V-LAP, U[−ε, ε] for R-LAP, U[−2ε, 2ε] for N-LAP). β per ε and variant is the
official README's table (:data:`LAP_BETA`).

Two behaviours (``behaviour``):

* ``paper`` (default): the adversarial perturbation of the paper, Δ = +∇_w CE (ascent), applied for the update
  and removed after it, like AWP.
* ``code``: what the official ``CIFAR10/LAP.py`` does: Δ is the weight change of one real optimiser step on
  CE (the *descent* direction, momentum and weight decay included), computed on a saved copy of the weights and
  optimiser state that is restored afterwards; the perturbation is *not* removed after the update. (When the
  step raises, the weights are still restored.) Needs ``ctx.optimizer``.
  The official code restores the optimiser with ``load_state_dict`` of a saved ``state_dict()``; under the torch
  it pins (2.0.1) that deep-copies the state, so the extra step's momentum update is undone, which is what
  ``code`` does here. From torch 2.1 on (pytorch#106082) ``load_state_dict`` shares the saved tensors instead and
  the same script keeps part of that update: run unmodified on a newer torch it trains differently (the parity
  case tests/parity/case_lap_rs.py measured a relative weight difference of 1.6 after 20 steps).

Cost: the official code reuses the attack's backward pass for the weight gradient; the attacks here take
input gradients only (parameters frozen), so LAP runs one more forward/backward at ``x + δ₀`` (training
costs about 3F+3Bk per batch instead of 2F+2Bk).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import BEHAVIOURS
from ..threat import ThreatModel
from ..training.hooks import StepContext
from .base import Perturbation, ascent_gradients, layer_scaled, register_weight_perturbation

LAP_VARIANTS = ("fgsm", "fgsm_rs", "nfgsm")
"""V-LAP (zero start, step ε, projection), R-LAP (U[−ε, ε], 1.25ε, projection), N-LAP (U[−2ε, 2ε], ε, none):
the training attack each β row was tuned for."""

LAP_BETA: dict[int, dict[str, float]] = {
    8: {"fgsm": 0.03, "fgsm_rs": 0.002, "nfgsm": 0.001},
    12: {"fgsm": 0.058, "fgsm_rs": 0.03, "nfgsm": 0.002},
    16: {"fgsm": 0.07, "fgsm_rs": 0.05, "nfgsm": 0.005},
    32: {"fgsm": 0.48, "fgsm_rs": 0.3, "nfgsm": 0.75},
}
"""β by ε (in /255 pixel levels) and variant, CIFAR-10 (official README)."""



def lap_factors(num_layers: int, gamma: float) -> list[float]:
    """λ_l = 1 − (ln l / ln L)^γ for l = 1..L (λ_1 = 1; a single layer gets 1)."""
    if num_layers < 1:
        raise ConfigError(f"lap: needs at least one perturbed layer, got {num_layers}.")
    if num_layers == 1:
        return [1.0]
    log_l = math.log(num_layers)
    return [1.0 - (math.log(l) / log_l) ** gamma for l in range(1, num_layers + 1)]


def lap_default_beta(threat: ThreatModel, variant: str) -> float:
    """The official β for ``variant`` at the threat's ε (L∞, ε in {8, 12, 16, 32}/255)."""
    px = round(threat.eps * 255, 6)
    if threat.norm != "linf" or px not in LAP_BETA:
        raise ConfigError(
            f"lap: the paper gives β only for L∞ ε in {{{', '.join(f'{e}/255' for e in LAP_BETA)}}}, got "
            f"{threat.norm} ε = {threat.eps:.6g} ({px:g}/255); set beta explicitly."
        )
    return LAP_BETA[int(px)][variant]


@register_weight_perturbation
class LAP(Perturbation):
    """Layer-aware weight perturbation for single-step adversarial training.

    Args:
        variant: the training attack the β default is for: ``fgsm`` (V-LAP), ``fgsm_rs`` (R-LAP), ``nfgsm`` (N-LAP).
        beta: overall size; default from :data:`LAP_BETA` for ``variant`` and ε.
        gamma: decay exponent of λ_l (0.3).
        behaviour: ``paper`` (ascent, removed after the step) or ``code`` (optimiser-step descent direction,
            kept), see the module docstring.
        **kwargs: ``modules``, ``params``, ``warmup_epochs`` of :class:`Perturbation`.
    """

    name = "lap"

    def __init__(self, threat: ThreatModel, *, variant: str = "fgsm_rs", beta: float | None = None,
                 gamma: float = 0.3, behaviour: str = "paper", **kwargs):
        super().__init__(threat, **kwargs)
        if variant not in LAP_VARIANTS:
            raise ConfigError(f"lap: variant must be one of {', '.join(LAP_VARIANTS)} (V-, R-, N-LAP), got {variant!r}.")
        if behaviour not in BEHAVIOURS:
            raise ConfigError(f"lap: behaviour must be paper or code, got {behaviour!r}.")
        self.variant = variant
        self.beta = float(lap_default_beta(threat, variant) if beta is None else beta)
        self.gamma = float(gamma)
        self.behaviour = behaviour
        if self.beta < 0 or self.gamma <= 0:
            raise ConfigError(f"lap: beta must be >= 0 and gamma > 0, got beta={self.beta}, gamma={self.gamma}.")

    @property
    def keep(self) -> bool:  # type: ignore[override]
        return self.behaviour == "code"

    def _start_loss(self, ctx: StepContext) -> Tensor:
        with ctx.autocast():
            logits = ctx.model(ctx.result.x_init)
        return F.cross_entropy(logits.float(), ctx.y)

    def perturbation(self, ctx: StepContext, loss_fn: Callable[..., Tensor], params: list[nn.Parameter]) -> list[Tensor]:
        if self.behaviour == "paper":
            direction = ascent_gradients(ctx.model, params, lambda: self._start_loss(ctx))
        else:
            direction = self._optimizer_step_change(ctx, params)
        factors = lap_factors(len(params), self.gamma)
        return layer_scaled(direction, params, [self.beta * f for f in factors])

    def _optimizer_step_change(self, ctx: StepContext, params: list[nn.Parameter]) -> list[Tensor]:
        """Δ = (weights after one optimiser step on CE at x + δ₀) − (weights before); weights, gradients and
        optimiser state are restored exactly afterwards."""
        opt = ctx.optimizer
        if opt is None:
            raise ConfigError("lap: behaviour 'code' takes one optimiser step and needs ctx.optimizer (the Trainer sets it).")
        all_params = [p for p in ctx.model.parameters()]
        weights = [p.detach().clone() for p in all_params]
        grads = [p.grad for p in all_params]
        state = {p: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()} for p, s in opt.state.items()}
        try:
            trainable = [p for p in all_params if p.requires_grad]
            for p, gp in zip(trainable, ascent_gradients(ctx.model, trainable, lambda: self._start_loss(ctx))):
                p.grad = gp
            opt.step()
            with torch.no_grad():
                return [p.detach() - w0 for p, w0 in zip(params, (weights[i] for i in _indices(all_params, params)))]
        finally:
            with torch.no_grad():
                for p, w0, g0 in zip(all_params, weights, grads):
                    p.copy_(w0)
                    p.grad = g0
            for p in list(opt.state.keys()):
                if p in state:
                    opt.state[p] = state[p]
                else:
                    del opt.state[p]


def _indices(all_params: list[nn.Parameter], subset: list[nn.Parameter]) -> list[int]:
    where = {id(p): i for i, p in enumerate(all_params)}
    return [where[id(p)] for p in subset]
