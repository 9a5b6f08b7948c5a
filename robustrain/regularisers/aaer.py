"""AAER (Lin et al., "Eliminating catastrophic overfitting via abnormal adversarial examples regularization",
NeurIPS 2023, arXiv 2404.08154; tmllab/2023_NeurIPS_AAER ``CIFAR10/AAER.py``).

With per-example losses ℓ^init at the attack's start point x + δ₀ and ℓ^adv at x_adv, logits z^init, z^adv,
A = {i : ℓ_i^init > ℓ_i^adv} (abnormal adversarial examples, AAEs) and N its complement:

    V_S  = (1/|S|) Σ_{i∈S} ‖z_i^init − z_i^adv‖²₂
    term = λ1·(|A|/B)·[λ2·mean_{i∈A}(ℓ_i^init − ℓ_i^adv) + λ3·max(V_A − stopgrad(V_N), 0)]   if |A| > 0 and |N| > 0

ℓ^init and z^init come from the attack's own forward at its start point (``AttackResult.loss_init`` /
``logits_init``, detached) and ℓ^adv, z^adv from the objective's forward (``ctx.logits_adv``): no extra pass.
ℓ is plain cross-entropy, as in the official code.

Gradients. The official code builds the λ2 term from ``loss.detach()`` (``loss_after``) and the detached
``loss_before``: the term adds a constant to the loss value and **no gradient**; only the λ3 term trains (through
z^adv, with V_N a stop-gradient). That is the default here (``lam2_gradient: false``), and the published λ2 values
were tuned with it. ``lam2_gradient: true`` instead differentiates the λ2 term through ℓ^adv, as the formula read
literally has it: the net coefficient of ∇ℓ_i^adv of an AAE becomes (1 − λ1·λ2)/B, gradient *ascent* on the AAEs for
every published λ2 > 1; at CIFAR-10 ε = 16/255 (λ2 = 7 / 8.5) that diverged to a non-finite loss within two epochs
(``results/studies/co_cifar10.md``).

Deprecated spelling: ``drop_gradient`` (until this release the only name) meant the opposite of what it says:
``drop_gradient: true`` *kept* the λ2 gradient. It still works, with the same meaning
(``drop_gradient: X`` = ``lam2_gradient: X``), and warns (``FutureWarning``) naming the replacement.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch

from ..errors import ConfigError
from ..threat import ThreatModel
from .base import LossTerm, StepContext, eps_pixels, per_example_ce, register_regulariser, wide, zero_loss

# Official λ2 / λ3 for CIFAR-10 (README of the official repository; λ1 = 1 everywhere), by ε in pixel levels.
AAER_DEFAULTS: dict[str, dict[float, tuple[float, float]]] = {
    "rs": {8: (2.5, 1.5), 12: (5.0, 2.75), 16: (7.0, 3.25), 32: (5.75, 1.5)},
    "n": {8: (1.5, 0.15), 12: (5.0, 0.55), 16: (8.5, 1.5), 32: (2.75, 0.75)},
}


def aaer_default_lambdas(threat: ThreatModel, variant: str) -> tuple[float, float]:
    """(λ2, λ3) of the paper's CIFAR-10 table for ``variant`` ("rs": RS-AAER, "n": N-AAER) at this ε."""
    table = AAER_DEFAULTS[variant]
    px = eps_pixels(threat)
    if threat.norm != "linf" or px not in table:
        raise ConfigError(
            f"aaer: the paper gives λ2/λ3 only for L∞ ε in {{{', '.join(f'{int(e)}/255' for e in table)}}} "
            f"(got {threat.norm} ε = {threat.eps:.6g}); set lam2 and lam3 explicitly. CIFAR-10 table "
            f"({variant}-AAER): " + ", ".join(f"{int(e)}/255: {v[0]}/{v[1]}" for e, v in table.items()) + "."
        )
    return table[px]


@register_regulariser
class AAER(LossTerm):
    """Abnormal-adversarial-example regulariser.

    Args:
        threat: the threat model (ε picks the default λ2, λ3).
        variant: "rs" (RS-AAER: FGSM-RS base attack) or "n" (N-AAER: N-FGSM base attack); only picks the defaults.
        lam1: λ1 (1.0).
        lam2: λ2, weight of the AAEs' loss drop; default from the paper's CIFAR-10 table.
        lam3: λ3, weight of the logit-variation gap; default from the table.
        lam2_gradient: differentiate the λ2 term through ℓ^adv (the formula read literally) instead of the official
            code's constant (detached) λ2 term (default false = the official code; see the module docstring).
        drop_gradient: deprecated, inverted name of ``lam2_gradient`` (``drop_gradient: true`` keeps the gradient,
            i.e. ``lam2_gradient: true``); warns and maps onto ``lam2_gradient``.

    Logs every step: ``count`` (|A|), ``rate`` (|A|/B), ``loss_drop`` (mean_A(ℓ^init − ℓ^adv)) and ``var_gap``
    (V_A − V_N); the last two are 0 when A or N is empty.
    """

    name = "aaer"
    signals = {"aae_rate": "rate"}  # the overfitting monitor reads the abnormal-example rate (hooks.LossTerm.signals)
    behaviour_note = ("the default is the official code's detached λ2 term; lam2_gradient: true is the formula's "
                      "gradient, and the base attack is the attack section")

    def __init__(self, threat: ThreatModel, *, variant: str = "rs", lam1: float = 1.0, lam2: float | None = None,
                 lam3: float | None = None, lam2_gradient: bool | None = None, drop_gradient: bool | None = None):
        if variant not in AAER_DEFAULTS:
            raise ConfigError(f"aaer: variant must be 'rs' (RS-AAER) or 'n' (N-AAER), got {variant!r}.")
        self.variant = variant
        if lam2 is None or lam3 is None:
            d2, d3 = aaer_default_lambdas(threat, variant)
            lam2 = d2 if lam2 is None else lam2
            lam3 = d3 if lam3 is None else lam3
        self.lam1, self.lam2, self.lam3 = float(lam1), float(lam2), float(lam3)
        if drop_gradient is not None:
            if lam2_gradient is not None:
                raise ConfigError(
                    f"aaer: drop_gradient is the deprecated (inverted) name of lam2_gradient; give only lam2_gradient "
                    f"(got drop_gradient={drop_gradient!r} and lam2_gradient={lam2_gradient!r})."
                )
            warnings.warn(
                f"aaer: the option drop_gradient is deprecated because its name is inverted: drop_gradient: "
                f"{str(bool(drop_gradient)).lower()} {'KEEPS' if drop_gradient else 'drops'} the gradient of the λ2 "
                f"term ({'the formula read literally' if drop_gradient else 'the official code'}). Write "
                f"lam2_gradient: {str(bool(drop_gradient)).lower()} instead (false, the default, is the official "
                "code's detached λ2 term).",
                FutureWarning,
                stacklevel=2,
            )
            lam2_gradient = bool(drop_gradient)
        self.lam2_gradient = bool(lam2_gradient)

    def __call__(self, ctx: StepContext) -> dict[str, Any]:
        res = ctx.result
        if res.loss_init is None or res.logits_init is None or ctx.logits_adv is None:
            raise ConfigError(
                "aaer needs the attack's start-point loss and logits (AttackResult.loss_init / logits_init) and the "
                "objective's logits at x_adv; use an attack that returns them (fgsm, fgsm_rs, nfgsm, pgd)."
            )
        loss_adv = per_example_ce(ctx.logits_adv, ctx.y)
        loss_init = wide(res.loss_init.detach())
        abnormal = loss_init > loss_adv.detach()
        b = abnormal.numel()
        n_a = int(abnormal.sum())
        logs: dict[str, Any] = {"count": float(n_a), "rate": n_a / b, "loss_drop": 0.0, "var_gap": 0.0}
        if n_a == 0 or n_a == b:
            return {"loss": zero_loss(ctx), **logs}
        variation = (wide(res.logits_init.detach()) - wide(ctx.logits_adv)).square().sum(dim=1)
        v_a = variation[abnormal].mean()
        v_n = variation[~abnormal].mean().detach()
        drop = (loss_init[abnormal] - loss_adv[abnormal]).mean()
        if not self.lam2_gradient:
            drop = drop.detach()  # the official code: loss_before and loss_after are both detached
        reg = self.lam1 * (n_a / b) * (self.lam2 * drop + self.lam3 * torch.relu(v_a - v_n))
        logs.update(loss_drop=drop.detach(), var_gap=(v_a - v_n).detach())
        return {"loss": reg, **logs}
